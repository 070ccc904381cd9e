"""Mixed precision (tumorfm.model.precision): a network stored in bf16 for prediction answers
exactly as the float32 one under autocast, at about half the memory."""

import copy

import pytest
import torch

from tumorfm.errors import TumorFMError
from tumorfm.model import create_model
from tumorfm.model.precision import autocast, resolve_precision, store_lower


def test_weights_stored_in_bf16_give_the_same_outputs_under_autocast():
    torch.manual_seed(0)
    network = create_model("tsfm-tiny", 1, 2, (16, 32, 32)).eval()
    lowered = store_lower(copy.deepcopy(network), "bf16")
    x = torch.randn(1, 1, 16, 32, 32)
    context, _ = autocast("bf16", torch.device("cpu"))
    with torch.inference_mode(), context:
        expected, got = network(x), lowered(x)
    assert torch.equal(expected, got)
    dtypes = {name: p.dtype for name, p in lowered.named_parameters()}
    assert dtypes["stem.weight"] == torch.bfloat16  # a convolution: autocast's bf16 anyway
    assert dtypes["final.0.weight"] == torch.float32  # a norm keeps float32
    size = sum(p.numel() * p.element_size() for p in lowered.parameters())
    assert size < 0.6 * sum(p.numel() * p.element_size() for p in network.parameters())


def test_float32_stores_nothing_lower_and_unknown_precisions_are_refused():
    network = create_model("tsfm-tiny", 1, 1, (16, 32, 32))
    store_lower(network, "fp32")
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    with pytest.raises(TumorFMError, match="precision 'bf32'"):
        resolve_precision("bf32", torch.device("cpu"))


def test_channels_last_prediction_keeps_the_network_and_its_parameters():
    """Prediction runs the network channels-last, where instance norm goes through group norm
    (tumorfm.model.blocks.InstanceNorm): the same function, so the answers agree to bf16's
    rounding, and training's layout still takes nn.InstanceNorm3d's own path bit for bit."""
    torch.manual_seed(0)
    network = create_model("tsfm-tiny", 1, 2, (16, 32, 32)).eval()
    last = copy.deepcopy(network).to(memory_format=torch.channels_last_3d)
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.inference_mode():
        expected, got = network(x), last(x)
    assert torch.allclose(expected, got, atol=1e-4)
    norm = network.final[0]
    plain = torch.nn.InstanceNorm3d(norm.num_features, eps=norm.eps, affine=True)
    plain.load_state_dict(norm.state_dict())
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)  # a learnt affine, not the identity it starts as
        plain.weight.copy_(norm.weight)
    features = torch.randn(1, norm.num_features, 4, 8, 8)
    assert torch.equal(norm(features), plain(features))
    channels_last = features.to(memory_format=torch.channels_last_3d)
    assert torch.allclose(norm(channels_last), plain(features), atol=1e-5)
