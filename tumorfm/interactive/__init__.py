"""Promptable refinement (issue 19): clicks and boxes as input channels of the TSFM network,
a simulated reader for training and benchmarks, and a Session holding one scan's prompts and
mask, like segment-anything's SamPredictor; on an automatic bundle, an AutomaticSession whose
clicks are local thresholds on the network's answer (tumorfm.interactive.local)."""

from tumorfm.interactive.prompts import (
    POINT_RADIUS_MM,
    PROMPT_CHANNELS,
    Box,
    Point,
    encode,
    from_world,
)
from tumorfm.interactive.session import AutomaticSession, IndexMap, Session
from tumorfm.interactive.simulate import corrective_click, first_prompt, simulate_clicks

__all__ = [
    "POINT_RADIUS_MM",
    "PROMPT_CHANNELS",
    "AutomaticSession",
    "Box",
    "IndexMap",
    "Point",
    "Session",
    "corrective_click",
    "encode",
    "first_prompt",
    "from_world",
    "simulate_clicks",
]
