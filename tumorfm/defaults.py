"""Patch sizes (z, y, x voxels), patch placement and the decision threshold, each defined once.
Plain constants: the command line reads them for its option defaults without loading torch or
scipy.

The plan's own patch size (nnU-Net's rule for a 24 GB GPU) is recorded for parity with nnU-Net and
printed by `preprocess`; training uses its `--patch`, and the lowres plan picks its spacing so
that CPU_PATCH holds most of the median case.
"""

PAPER_PATCH = (112, 160, 192)  # the paper's pretraining patch: `pretrain`'s default
CPU_PATCH = (48, 96, 96)  # the lowres plan's patch, the transfer study's and the shipped model's
CPU_PROFILE_PATCH = (48, 64, 64)  # `pretrain --profile cpu`: minutes on a 2-core CPU
DEMO_PATCH = (32, 64, 64)  # `make demo`: the whole pipeline in a few minutes
# a class's probability cut, unless its bundle stores one that `tumorfm model calibrate` chose
DECISION_THRESHOLD = 0.5
# where a case smaller than the patch, and a sample's foreground voxel, sit in a training patch:
# centred (the default, nnU-Net's rule) or anywhere (tumorfm.train.loader says when and why)
PLACEMENTS = ("centred", "anywhere")
PLACEMENT = "centred"
