"""Resampler (query former): shapes, the fixed 2-D sin-cos tables and their interpolation, wiring
(positions on queries and keys, never values), gradient flow, init hook."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hires_vlm.connectors.resampler import Resampler, resize_pos_embed, sincos_2d


def test_output_shape_and_kv_projection():
    r = Resampler(16, dim=32, heads=4)
    out = r(torch.randn(3, 64, 32))
    assert out.shape == (3, 16, 32)
    assert isinstance(r.kv_proj, torch.nn.Identity)
    r2 = Resampler(9, dim=32, heads=2, kv_dim=48)
    assert r2(torch.randn(2, 25, 48)).shape == (2, 9, 32)
    assert isinstance(r2.kv_proj, torch.nn.Linear) and r2.kv_proj.bias is None


def test_layer_norms_use_eps_1e6_and_one_attention_layer():
    r = Resampler(4, dim=16, heads=4)
    assert [m.eps for m in (r.ln_q, r.ln_kv, r.ln_post)] == [1e-6] * 3
    assert sum(isinstance(m, torch.nn.MultiheadAttention) for m in r.modules()) == 1
    assert r.attn.num_heads == 4


@pytest.mark.parametrize("bad", [(15, 32, 4), (16, 30, 4), (16, 32, 5)])
def test_bad_geometry_is_refused(bad):
    with pytest.raises(ValueError):
        Resampler(*bad)


def test_non_square_key_map_is_refused():
    with pytest.raises(ValueError, match="square"):
        Resampler(4, 16, 2)(torch.randn(1, 10, 16))


def test_sincos_table_values():
    """dim 8, grid 3: channels [sin x·ω, cos x·ω] for the column x, then the same for the row y;
    ω = 1/10000^(k/2), k = 0, 1 (the MAE/official formula), rows in raster order."""
    t = sincos_2d(8, 3)
    assert t.shape == (9, 8)
    omega = torch.tensor([1.0, 1 / 100.0])
    for idx in range(9):
        y, x = divmod(idx, 3)
        expect = torch.cat([torch.sin(x * omega), torch.cos(x * omega), torch.sin(y * omega), torch.cos(y * omega)])
        torch.testing.assert_close(t[idx], expect)


def test_pos_embed_interpolation_is_bicubic_from_the_query_grid():
    r = Resampler(16, dim=32, heads=4)  # query grid 4
    q_table = sincos_2d(32, 4)
    torch.testing.assert_close(r.pos_embed(4, "cpu", torch.float32), q_table)
    got = r.pos_embed(8, "cpu", torch.float32)
    img = q_table.reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    ref = F.interpolate(img, size=(8, 8), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(64, 32)
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(got, sincos_2d(32, 8))  # interpolated, not recomputed on the key grid
    torch.testing.assert_close(resize_pos_embed(q_table, 4, 4), q_table)


def test_forward_adds_positions_to_queries_and_keys_not_values():
    torch.manual_seed(0)
    r = Resampler(16, dim=32, heads=4).eval()
    x = torch.randn(2, 64, 32)
    out = r(x)
    kv = r.ln_kv(x)
    q = (r.ln_q(r.query) + sincos_2d(32, 4)).expand(2, -1, -1)
    keys = kv + r.pos_embed(8, "cpu", torch.float32)
    ref = r.ln_post(r.attn(q, keys, kv, need_weights=False)[0])
    torch.testing.assert_close(out, ref)
    wrong = r.ln_post(r.attn(q, keys, keys, need_weights=False)[0])  # positions on the values too
    assert not torch.allclose(out, wrong, atol=1e-4)


def test_positions_make_the_output_depend_on_token_order():
    torch.manual_seed(0)
    r = Resampler(4, dim=16, heads=2).eval()
    x = torch.randn(1, 16, 16)
    perm = torch.randperm(16)
    assert not torch.allclose(r(x), r(x[:, perm]), atol=1e-5)


def test_gradient_reaches_every_parameter_and_the_input():
    r = Resampler(9, dim=16, heads=2, kv_dim=24)
    x = torch.randn(2, 36, 24, requires_grad=True)
    r(x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in r.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_query_init_is_normal_002_through_the_init_hook():
    from transformers import initialization as init

    r = Resampler(64, dim=32, heads=4)
    with torch.no_grad():
        r.query.zero_()
    r.init_parameters(init)
    std = r.query.std().item()  # truncation at ±2 (absolute, as torch/timm do) leaves N(0, 0.02²) as it is
    assert 0.015 < std < 0.025 and abs(r.query.mean().item()) < 0.005
    r.query._is_hf_initialized = True  # a loaded weight: the hook must leave it alone
    with torch.no_grad():
        r.query.fill_(3.0)
    r.init_parameters(init)
    assert torch.all(r.query == 3.0)


def test_batch_elements_are_independent():
    torch.manual_seed(0)
    r = Resampler(4, dim=16, heads=2).eval()
    x = torch.randn(3, 16, 16)
    full = r(x)
    for i in range(3):
        torch.testing.assert_close(full[i:i + 1], r(x[i:i + 1]), atol=1e-6, rtol=1e-5)
    assert math.isclose(full.shape[1], 4)
