"""Pooling a token map: the official bilinear resize equals centre-token selection (odd factors),
average pooling is the block mean, any output grid and non-square maps."""

import pytest
import torch
import torch.nn.functional as F

from hires_vlm.connectors import pool_map


@pytest.mark.parametrize("factor_h,factor_w", [(3, 3), (1, 3), (3, 1), (5, 3), (1, 1), (5, 5)])
def test_bilinear_equals_centre_token_for_odd_factors(factor_h, factor_w):
    torch.manual_seed(0)
    out_h, out_w = 8, 6
    fmap = torch.randn(2, out_h * factor_h, out_w * factor_w, 5)
    centre = fmap[:, factor_h // 2::factor_h, factor_w // 2::factor_w]
    assert torch.equal(pool_map(fmap, (out_h, out_w), "bilinear"), centre)


def test_official_72_to_24_is_the_centre_of_each_3x3_block():
    fmap = torch.randn(1, 72, 72, 4)
    assert torch.equal(pool_map(fmap, (24, 24), "bilinear"), fmap[:, 1::3, 1::3])


def test_bilinear_with_an_even_factor_averages_the_central_2x2():
    fmap = torch.randn(1, 16, 16, 3)
    out = pool_map(fmap, (4, 4), "bilinear")
    want = fmap[:, 1::4, 1::4] + fmap[:, 2::4, 1::4] + fmap[:, 1::4, 2::4] + fmap[:, 2::4, 2::4]
    assert torch.allclose(out, want / 4, atol=1e-6)


@pytest.mark.parametrize("h,w,out", [(24, 24, (8, 8)), (8, 24, (8, 8)), (32, 16, (8, 8)), (24, 24, (12, 12))])
def test_avg_pooling_is_the_block_mean(h, w, out):
    fmap = torch.randn(2, h, w, 3)
    kh, kw = h // out[0], w // out[1]
    want = F.avg_pool2d(fmap.permute(0, 3, 1, 2), (kh, kw)).permute(0, 2, 3, 1)
    got = pool_map(fmap, out, "avg")
    assert got.shape == (2, *out, 3) and torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got[0, 0, 0], fmap[0, :kh, :kw].mean((0, 1)), atol=1e-6)


def test_bilinear_keeps_a_low_precision_dtype_and_errors():
    fmap = torch.randn(1, 6, 6, 2, dtype=torch.bfloat16)
    assert pool_map(fmap, (2, 2), "bilinear").dtype == torch.bfloat16
    with pytest.raises(ValueError, match="choose one of"):
        pool_map(fmap, (2, 2), "median")
