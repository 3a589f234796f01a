"""The tiny foundation: the shipped files match their hashes, the builder is deterministic, models load it."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

from hires_vlm.data.synthetic import FAMILIES
from hires_vlm.data.synthetic.captions import caption_views, crop_caption, image_caption, lowres_caption
from hires_vlm.foundation import SHIPPED, FoundationError, load_foundation
from hires_vlm.foundation.pretrain import FoundationRecipe, build_foundation, draw_items
from hires_vlm.tiny import build_tiny
from hires_vlm.train.config import ConfigError, from_dict

TINY_RECIPE = dict(items_per_family=3, crops_per_item=2, vision_steps=2, vision_batch=8, lm_steps=2, lm_batch=4,
                   vision_hidden=32, vision_layers=2, text_hidden=32, text_layers=1, vocab_size=600)


def test_the_shipped_foundation_matches_its_hashes_and_is_small():
    f = load_foundation()  # verifies every file against foundation.json
    assert os.path.samefile(f.path, SHIPPED)
    size = sum(os.path.getsize(os.path.join(d, n)) for d, _, files in os.walk(SHIPPED) for n in files)
    assert size < 12 * 2**20, size
    m = f.manifest
    assert m["recipe"]["vision_steps"] >= 1000 and m["metrics"]["vision"]["final_batch_retrieval_accuracy"] > 0.5
    assert os.path.isfile(os.path.join(SHIPPED, "README.md"))  # the model card says what it was trained on


def test_the_shipped_foundation_was_built_from_the_current_benchmark():
    # A new benchmark version needs a rebuild (`hires-vlm foundation build`), or the tower has not
    # seen the families the demo trains on; the manifest and the model card say which version it saw.
    from hires_vlm.data.synthetic import VERSION

    f = load_foundation()
    assert f.manifest["benchmark"] == VERSION
    with open(os.path.join(SHIPPED, "README.md"), encoding="utf-8") as fh:
        assert f"`{VERSION}`" in fh.read()


def test_an_altered_foundation_is_refused_naming_the_file(tmp_path):
    copy = tmp_path / "f"
    shutil.copytree(SHIPPED, copy)
    with open(copy / "language_model.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\0\0\0\1")
    with pytest.raises(FoundationError, match="language_model.safetensors changed"):
        load_foundation(str(copy))
    with pytest.raises(FoundationError, match="foundation.json missing"):
        load_foundation(str(tmp_path / "nothing"))


def test_the_builder_is_deterministic_and_its_output_loads_into_every_method(tmp_path):
    a = build_foundation(str(tmp_path / "a"), FoundationRecipe(**TINY_RECIPE), progress=False)
    b = build_foundation(str(tmp_path / "b"), FoundationRecipe(**TINY_RECIPE), progress=False)
    fa, fb = load_foundation(a), load_foundation(b)
    assert fa.manifest["files"] == fb.manifest["files"] and fa.fingerprint == fb.fingerprint
    vision_sd, lm_sd = fa.state_dicts()
    for method in ("llava", "slime", "inf_llava"):
        model, proc = build_tiny(method, foundation=a)
        assert model.vision_tower.model.config.hidden_size == 32
        for k, v in vision_sd.items():
            assert torch.equal(model.vision_tower.model.state_dict()[k], v.float()), k
        for k, v in lm_sd.items():
            assert torch.equal(model.language_model.state_dict()[k], v.float()), k
        assert model.config.foundation["fingerprint"] == fa.fingerprint
        assert proc.tokenizer.get_vocab() == fa.tokenizer().get_vocab()
    with pytest.raises(FileExistsError, match="not empty"):
        build_foundation(a, FoundationRecipe(**TINY_RECIPE), progress=False)  # nothing is overwritten unasked


def test_foundation_items_come_from_their_own_stream():
    """Disjoint from the benchmark: the same seed and index draw different pixels in each split."""
    from hires_vlm.data.synthetic import DEFAULT_SIZE_RANGE
    from hires_vlm.data.synthetic.families import _draw_item, _Opts

    fam = FAMILIES["fine_detail"]
    draws = {split: _draw_item(fam, 0, split, 0, 0, "pattern", "plain", DEFAULT_SIZE_RANGE, 224, _Opts()).image
             for split in ("train", "test", "foundation")}
    assert not np.array_equal(draws["foundation"], draws["train"])
    assert not np.array_equal(draws["foundation"], draws["test"])


def test_captions_name_what_the_view_holds():
    items = draw_items(FoundationRecipe(items_per_family=4))
    patterns = {"plain", "horizontal", "vertical", "checkered"}
    for s in items:
        low = lowres_caption(s)
        assert not set(low.split()) & patterns - {"plain"}, (s.family, low)  # no 1-px pattern at low resolution
        h, w = s.image.shape[:2]
        full = crop_caption(s, (0, 0, w, h))
        if s.family == "fine_detail":
            assert full.startswith(s.answer)
        if s.family == "counting":
            assert full.split()[0] == ["one", "two", "three", "four"][int(s.answer) - 1]
        if s.family == "quadrant":
            assert s.meta["pattern"] in full
        assert image_caption(s)
        views = caption_views(s, np.random.default_rng(0), 112, 3)
        assert len(views) == 4 and all(v.shape == (112, 112, 3) for v, _ in views)
    q = next(s for s in items if s.family == "quadrant")
    assert crop_caption(q, (0, 0, 1, 1)) == "nothing"


def test_a_training_config_names_the_foundation(tmp_path):
    base = {"run": {"output_dir": str(tmp_path)}, "stages": [{"name": "s", "trainable": {"connector": 1e-3}}]}
    cfg = from_dict({**base, "model": {"source": "tiny", "method": "llava", "foundation": "shipped"}})
    assert cfg.model.foundation == "shipped"
    with pytest.raises(ConfigError, match="fixes the sizes"):
        from_dict({**base, "model": {"source": "tiny", "method": "llava", "foundation": "shipped",
                                     "tiny": {"vision_hidden": 64}}})
    # `--set model.source=pretrained` on a tiny config: the saved model's own weights, the foundation dropped
    assert from_dict({**base, "model": {"source": "pretrained", "path": "x", "foundation": "shipped"}}).model.foundation is None
    with pytest.raises(ConfigError, match="'shipped' or a foundation directory"):
        from_dict({**base, "model": {"source": "tiny", "method": "llava", "foundation": 3}})


def test_foundation_cli_verify(capsys):
    from hires_vlm.cli import main

    assert main(["foundation", "verify", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == "shipped" and info["sizes"]["vision_hidden"] == 256


def test_foundation_cli_build_then_verify(tmp_path, capsys):
    from hires_vlm.cli import main

    out = tmp_path / "f"
    assert main(["foundation", "build", "--out", str(out), "--items-per-family", "2", "--vision-steps", "1",
                 "--lm-steps", "1", "--no-progress"]) == 0
    assert main(["foundation", "verify", str(out)]) == 0
    assert "match their hashes" in capsys.readouterr().out
    (out / "tokenizer" / "extra.txt").write_text("x")
    assert main(["foundation", "verify", str(out)]) == 1
    assert "extra.txt not listed" in capsys.readouterr().out
    assert main(["foundation", "build", "--out", str(out), "--vision-steps", "0"]) == 2  # a clear error, no traceback
