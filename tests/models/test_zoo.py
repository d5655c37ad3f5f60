"""Every registered model: output shape, divisor check, ONNX parity, parameter count, registry lookups."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from edge.errors import EdgeError
from models import create_model, get_spec, list_models
from models.blocks import mobilenetv2_features
from models.deform import DeformConv2d

MODELS = list_models()
# DU-Net resamples every channel of its 64-256-channel maps: seconds per forward pass on a laptop CPU.
SLOW = {"dunet"}


def _marked(names: list[str]) -> list:
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in names]


def _sizes(divisor: int) -> tuple[tuple[int, int], tuple[int, int]]:
    side = max(64, divisor * 4)
    return (side, side), (side, side + max(32, divisor * 2))


def _randomised(name: str) -> torch.nn.Module:
    """A model in eval mode with non-trivial BN and deformable offsets, and logits of order one.

    Random BN statistics and affine parameters make exports face non-identity BN folding; random
    offset-branch weights make the deformable sampling points actually move. He initialisation keeps the
    activations near unit scale through the depth (PyTorch's default shrinks them about 3x per layer), so
    the absolute ONNX tolerance below means something.
    """
    torch.manual_seed(0)
    model = create_model(name)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(m.weight, generator=g, nonlinearity="relu")
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.weight.copy_(0.5 + 0.5 * torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, DeformConv2d):
                torch.nn.init.normal_(m.conv_offset.weight, 0.0, 0.05, generator=g)
                torch.nn.init.normal_(m.conv_offset.bias, 0.0, 0.5, generator=g)
    return model.eval()


def test_list_models_names_all_nine():
    assert MODELS == sorted(["cbam_unet", "cmp_unet", "dunet", "erfnet", "hybridnetseg", "iternet", "m2unet",
                             "sepfe", "unet"])


@pytest.mark.parametrize("name", MODELS)
def test_spec_is_complete(name):
    spec = get_spec(name)
    assert spec.name == name and spec.output == "logits" and spec.threshold == 0.5
    assert spec.paper and spec.out_channels == 1 and spec.in_channels == 3
    assert all(side % spec.divisor == 0 for side in spec.default_tile)
    assert 0 < spec.overlap < min(spec.default_tile) // 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.divisor = 1


@pytest.mark.parametrize("name", _marked(MODELS))
def test_forward_shape_square_and_non_square(name):
    model = _randomised(name)
    for h, w in _sizes(model.spec.divisor):
        with torch.no_grad():
            y = model(torch.rand(1, 3, h, w))
        assert isinstance(y, torch.Tensor) and y.shape == (1, 1, h, w), (name, h, w)
        assert y.dtype == torch.float32 and torch.isfinite(y).all()


@pytest.mark.parametrize("name", MODELS)
def test_size_not_multiple_of_divisor_names_padded_size(name):
    model = create_model(name)
    d = model.spec.divisor
    h, w = 4 * d + 3, 4 * d
    with pytest.raises(EdgeError) as err:
        model(torch.rand(1, 3, h, w))
    assert f"{math.ceil(h / d) * d}x{w}" in str(err.value)
    assert str(d) in str(err.value)


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.parametrize("name", _marked(MODELS))
def test_onnx_export_matches_pytorch(name, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = _randomised(name)
    h, w = _sizes(model.spec.divisor)[1]
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = model(x).numpy()
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), opset_version=17, dynamo=False, input_names=["input"],
                      output_names=["logits"])
    graph = onnx.load(str(path), load_external_data=False).graph
    ops = {n.op_type for n in graph.node}
    assert not ops & {"DeformConv", "ATen"}, ops
    producer = next(n for n in graph.node if "logits" in n.output)
    assert producer.op_type != "Sigmoid", "models return logits; the sigmoid belongs to the runtime"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": x.numpy()})[0]
    assert got.shape == (1, 1, h, w)
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


@pytest.mark.parametrize("name", [n for n in MODELS if get_spec(n).params_expected])
def test_parameter_count_matches_paper(name):
    model = create_model(name)
    n = sum(p.numel() for p in model.parameters())
    expected = model.spec.params_expected
    assert abs(n - expected) / expected <= 0.03, f"{name}: {n:,} parameters vs {expected:,} in the paper"


def test_unknown_model_lists_choices_with_suggestion():
    with pytest.raises(EdgeError) as err:
        create_model("m2unet2")
    msg = str(err.value)
    assert "did you mean 'm2unet'" in msg
    assert all(n in msg for n in MODELS)


def test_iternet_outputs_all_iterations_in_training_only_last_in_eval():
    torch.manual_seed(0)
    model = create_model("iternet")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        last = model(x)
        every = model(x, return_all=True)
        model.train()
        trained = model(x)
    assert isinstance(last, torch.Tensor) and last.shape == (1, 1, 64, 64)
    assert isinstance(every, list) and len(every) == 4 and all(o.shape == (1, 1, 64, 64) for o in every)
    assert torch.equal(every[-1], last)
    assert isinstance(trained, list) and len(trained) == 4
    # Weight sharing: one mini-UNet, private 1x1 reductions and heads per iteration.
    assert len(model.reduce) == 3 and len(model.heads) == 3


def _torchvision_mobilenetv2_state_dict() -> dict[str, torch.Tensor]:
    """A state dict laid out like torchvision's ``mobilenet_v2().state_dict()`` (19 feature layers plus the
    classifier), with random values: the test needs the key format, not ImageNet accuracy."""
    torch.manual_seed(5)
    features = torch.nn.Sequential(*mobilenetv2_features(18))
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    sd["features.18.0.weight"] = torch.randn(1280, 320, 1, 1)
    sd["classifier.1.weight"] = torch.randn(1000, 1280)
    sd["classifier.1.bias"] = torch.randn(1000)
    return sd


def test_sepfe_encoder_weights_from_torchvision_state_dict(tmp_path):
    sd = _torchvision_mobilenetv2_state_dict()
    path = tmp_path / "mobilenet_v2-imagenet.pth"
    torch.save(sd, path)
    plain = create_model("sepfe")
    assert plain.encoder_init == "random"
    model = create_model("sepfe", encoder_weights=str(path))
    assert model.encoder_init == "imagenet:mobilenet_v2-imagenet.pth"
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, sd[f"features.{k}"]), k
    assert not torch.equal(plain.encoder[0][0].weight, model.encoder[0][0].weight)


def test_sepfe_encoder_weights_of_wrong_format_raise(tmp_path):
    path = tmp_path / "not-mobilenet.pth"
    torch.save({"conv.weight": torch.zeros(3, 3, 3, 3)}, path)
    with pytest.raises(EdgeError, match="missing keys: features.0"):
        create_model("sepfe", encoder_weights=str(path))
