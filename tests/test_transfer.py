"""Starting from a pretrained bundle: weights that fit, head channels by class name."""

import torch

from tumorfm.model import create_model
from tumorfm.model.bundle import save_bundle
from tumorfm.train.transfer import head_convs, initialise_from


def test_weights_and_matching_head_channels_carry_over(tmp_path):
    torch.manual_seed(0)
    source = create_model("tsfm-tiny", 1, 3, (32, 32, 32), deep_supervision=True)
    bundle = save_bundle(tmp_path / "b", source, ["liver", "kidney", "spleen"], ["CT"], "tsfm-tiny")
    torch.manual_seed(1)
    target = create_model("tsfm-tiny", 1, 2, (16, 48, 48), deep_supervision=True)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = initialise_from(target, bundle, ["spleen", "liver_tumour"])
    assert report["classes_from_pretrained"] == ["spleen"]
    assert report["new_classes"] == ["liver_tumour"] and report["skipped_tensors"] == []
    old, new = source.state_dict(), target.state_dict()
    assert torch.equal(new["stem.weight"], old["stem.weight"])
    heads = head_convs(target)
    assert "head" in heads and len(heads) == 1 + len(target.aux_heads)
    for name in heads:
        weight = f"{name}.weight"
        assert torch.equal(new[weight][0], old[weight][2])  # spleen from the pretrained channel
        assert torch.equal(new[weight][1], fresh[weight][1])  # the new class keeps its init
    position = "bottleneck.position"  # resized from the 32^3 grid to the 16x48x48 one
    assert new[position].shape == fresh[position].shape != old[position].shape
