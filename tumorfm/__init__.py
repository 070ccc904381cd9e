"""tumorfm: the Tumor Segmentation Foundation Model (TSFM) as software people use."""

__version__ = "0.1.0"
