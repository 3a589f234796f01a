"""Fusion of the two enhanced maps: one test per kind against its formula, order, residual + norm."""

import pytest
import torch
import torch.nn.functional as F

from hires_vlm.connectors import FUSION_KINDS, DualFusion


@pytest.fixture
def maps():
    torch.manual_seed(0)
    return torch.randn(2, 6, 9, 8), torch.randn(2, 6, 9, 8)  # global, local  [b x H x W x d]


def test_linear_concat_is_two_bias_free_halves_global_first(maps):
    g, l = maps
    f = DualFusion("linear_concat", 8, order="global_first")
    assert f.global_proj.bias is None and f.global_proj.out_features == 4
    out = f(g, l)
    assert torch.equal(out, torch.cat([g @ f.global_proj.weight.T, l @ f.local_proj.weight.T], -1))


def test_mlp_concat_is_the_official_bottleneck_local_first_with_residual_norm(maps):
    g, l = maps
    f = DualFusion("mlp_concat", 32, order="local_first", residual_norm=True, bottleneck=16)
    g, l = torch.randn(2, 3, 3, 32), torch.randn(2, 3, 3, 32)
    assert [m.__class__.__name__ for m in f.local_mlp] == ["Linear", "GELU", "Linear"]
    assert f.local_mlp[0].out_features == 2 and f.local_mlp[2].out_features == 16  # d/16, d/2
    assert f.global_mlp[0].weight.data_ptr() != f.local_mlp[0].weight.data_ptr()
    cat = torch.cat([f.local_mlp(l), f.global_mlp(g)], -1)
    want = F.layer_norm(cat + g + l, (32,), f.norm.weight, f.norm.bias)
    assert torch.allclose(f(g, l), want, atol=1e-6)


@pytest.mark.parametrize("order", ["global_first", "local_first"])
def test_order_decides_which_half_comes_first(maps, order):
    g, l = maps
    f = DualFusion("linear_concat", 8, order=order)
    out = f(g, l)
    first = g @ f.global_proj.weight.T if order == "global_first" else l @ f.local_proj.weight.T
    assert torch.equal(out[..., :4], first)


def test_conv3x3_mixes_a_3x3_neighbourhood_of_both_maps(maps):
    g, l = maps
    f = DualFusion("conv3x3", 8, order="global_first")
    x = torch.cat([g, l], -1).permute(0, 3, 1, 2)
    assert torch.allclose(f(g, l), F.conv2d(x, f.conv.weight, f.conv.bias, padding=1).permute(0, 2, 3, 1), atol=1e-6)
    g2 = g.clone()
    g2[0, 3, 4] += 1
    diff = (f(g2, l) - f(g, l)).abs().amax(-1)[0] > 0
    assert diff.nonzero().tolist() == [[y, x] for y in (2, 3, 4) for x in (3, 4, 5)]


@pytest.mark.parametrize("kind,formula", [
    ("multiply", lambda g, l: g * l),
    ("weighted_add", lambda g, l: 0.5 * g + 0.5 * l),
    ("max", torch.maximum),
    ("add", lambda g, l: g + l),
])
def test_parameter_light_variants(maps, kind, formula):
    g, l = maps
    f = DualFusion(kind, 8)
    assert torch.allclose(f(g, l), formula(g, l))
    assert sum(p.numel() for p in f.parameters()) == (2 if kind == "weighted_add" else 0)


def test_weighted_add_weights_learn(maps):
    g, l = maps
    f = DualFusion("weighted_add", 8)
    f(g, l).sum().backward()
    assert f.weights.grad is not None and f.weights.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", FUSION_KINDS)
@pytest.mark.parametrize("residual_norm", [False, True])
def test_every_kind_keeps_the_shape_and_residual_norm_normalises(maps, kind, residual_norm):
    g, l = maps
    out = DualFusion(kind, 8, residual_norm=residual_norm)(g, l)
    assert out.shape == g.shape
    if residual_norm:
        assert torch.allclose(out.mean(-1), torch.zeros(out.shape[:-1]), atol=1e-5)


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="choose one of"):
        DualFusion("concat", 8)
    with pytest.raises(ValueError, match="must be even"):
        DualFusion("linear_concat", 7)
    with pytest.raises(ValueError, match="order"):
        DualFusion("add", 8, order="middle")
