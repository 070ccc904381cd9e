"""Tumour synthesis: new tumours in healthy organs, so a segmenter sees unlimited tumour examples.

procedural: deformed ellipsoids with filtered-noise texture (Hu et al., CVPR 2023), numpy only.
"""

from tumorfm.synth.procedural import SIZES, Synthesised, Tumour, reach_mm, synthesise

__all__ = ["SIZES", "Synthesised", "Tumour", "reach_mm", "synthesise"]
