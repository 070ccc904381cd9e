"""The TSFM network, its presets and model bundles."""

from tumorfm.model.network import TSFM, TSFMConfig
from tumorfm.model.presets import create_model, list_models, preset_config

__all__ = ["TSFM", "TSFMConfig", "create_model", "list_models", "preset_config"]
