"""Tumour synthesis: new tumours in healthy organs, so a segmenter sees unlimited tumour examples.

procedural: deformed ellipsoids with filtered-noise texture (Hu et al., CVPR 2023), numpy only.
diffusion: DiffTumor's latent diffusion (import tumorfm.synth.diffusion; it loads MONAI), trained
by train_diffusion on crops around real tumours (crops). dataset writes synthetic datasets;
online puts tumours into training patches.
"""

from tumorfm.synth.procedural import SIZES, Synthesised, Tumour, reach_mm, synthesise

__all__ = ["SIZES", "Synthesised", "Tumour", "reach_mm", "synthesise"]
