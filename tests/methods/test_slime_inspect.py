"""``hires-vlm inspect`` for SliME: the upper bound before routing and the count after the router
(a model in eval mode), against LLaVA-HD at the sizes the SliME paper discusses."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from hires_vlm.inspect_cut import Geometry, describe, routed_visual_tokens, routing_model
from hires_vlm.methods import resolve_method_config

SIZES = [(672, 672), (1008, 1008), (1344, 1344), (1920, 1080)]


@pytest.fixture(scope="module")
def router_model():
    return routing_model(resolve_method_config("slime"), Geometry())


def test_slime_gives_fewer_visual_tokens_than_llava_hd_before_and_after_routing(router_model):
    model, proc = router_model
    assert model.vision_tower.tile_size == 336 and model.vision_tower.grid == 24
    slime, hd, geo = resolve_method_config("slime"), resolve_method_config("llava_hd"), Geometry()
    for size in SIZES:
        bound = describe(size, slime, geo)[0]["visual_tokens"]
        base = describe(size, hd, geo)[0]["visual_tokens"]
        img = Image.new("RGB", size, (40, 120, 200))
        after, aux = routed_visual_tokens(img, model, proc, "What is in the picture?", gamma=0.95)
        assert after <= bound < base, (size, after, bound, base)
        local = aux["local_tokens"][0]
        assert bound == 576 + 1 + local  # g² + separator + tiles·144
        assert after == 577 + aux["router_keep"][0].numel()


def test_bound_is_global_plus_separator_plus_tiles_times_queries():
    slime, geo = resolve_method_config("slime"), Geometry()
    expect = {(672, 672): 4, (1008, 1008): 6, (1344, 1344): 6, (1920, 1080): 6}
    for size, tiles in expect.items():
        assert describe(size, slime, geo)[0]["visual_tokens"] == 576 + 1 + tiles * 144
    assert describe((2352, 336), slime, geo)[0]["visual_tokens"] == 1585  # the official worst case, 7 tiles


def test_routing_is_deterministic_and_gamma_one_keeps_the_bound(router_model):
    model, proc = router_model
    img = Image.new("RGB", (1008, 672), (200, 20, 20))
    a, _ = routed_visual_tokens(img, model, proc, "red?", gamma=0.9)
    b, _ = routed_visual_tokens(img, model, proc, "red?", gamma=0.9)
    full, _ = routed_visual_tokens(img, model, proc, "red?", gamma=1.0)
    bound = describe(img.size, model.connector.cfg, Geometry())[0]["visual_tokens"]
    assert a == b <= full == bound


def test_cli_inspect_route_json(tmp_path, capsys):
    from hires_vlm.cli import main

    path = tmp_path / "wide.png"
    Image.new("RGB", (1920, 1080), "white").save(path)
    assert main(["inspect", str(path), "--method", "slime", "--json", "--route", "--prompt", "a white wall",
                 "--gamma", "0.95"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["visual_tokens"] == 1441 and info["grid"] == [3, 2]
    assert info["visual_tokens_after_routing"] <= 1441 and info["router_gamma"] == 0.95
    assert main(["inspect", str(path), "--method", "llava_hd", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["visual_tokens"] > 1441
    assert main(["inspect", str(path), "--method", "slime", "--gamma", "0.5"]) == 2  # --gamma needs --route


def test_cli_inspect_route_with_a_saved_model(tmp_path, capsys):
    from hires_vlm.cli import main
    from hires_vlm.tiny import build_tiny

    model, proc = build_tiny({"preset": "slime", "local_queries": 16, "resampler_heads": 4}, text_layers=1,
                             vision_layers=1, vocab_size=300, image_resampler="torch")
    model.save_pretrained(tmp_path / "m")
    proc.save_pretrained(tmp_path / "m")
    img = tmp_path / "i.png"
    Image.new("RGB", (300, 200), "green").save(img)
    assert main(["inspect", str(img), "--model", str(tmp_path / "m"), "--route", "--json", "--gamma", "0.5"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["tile_size"] == 112 and info["visual_tokens"] == 64 + 1 + 6 * 16
    assert info["image_resampler"] == "torch"  # the saved model's pixels
    assert 65 < info["visual_tokens_after_routing"] < info["visual_tokens"] and info["router_gamma"] == 0.5
    assert main(["inspect", str(img), "--model", str(tmp_path / "m"), "--route", "--method", "llava_hd"]) == 2
