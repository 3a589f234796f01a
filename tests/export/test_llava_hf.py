"""``hires-vlm export --format llava_hf``: the export, loaded back by transformers' own classes,
computes what our model computes.

Every comparison is fp32 and runs our full pipeline (our processor, our model) against
transformers' (``AutoProcessor`` of the export through its chat template, then
``LlavaNextForConditionalGeneration`` / ``LlavaForConditionalGeneration``). Tolerance: max |Δlogits|
≤ 1e-5 over every position (measured: ≤ 2e-6; on identical pixels 0.0), views' pixels ≤ 1e-6 (float rounding of the
normalisation), token ids equal.
"""

from __future__ import annotations

import json
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hires_vlm.cli import main
from hires_vlm.export import (
    REPORT_FILE,
    ExportRefused,
    ExportVerificationError,
    check_exportable,
    export_model,
)
from hires_vlm.export.llava_hf import grid_pinpoints
from hires_vlm.export.verify import compare, probe_image
from hires_vlm.fsio import OutputExistsError
from hires_vlm.model import load_model
from hires_vlm.model.loading import model_fingerprint
from hires_vlm.tiny import build_tiny

TOL_LOGITS = 1e-5
TOL_PIXELS = 1e-6
S = 112  # the tiny tower's tile size
SMALL = {"vision_hidden": 32, "text_hidden": 64}

# (width, height): landscape, portrait, square, a small square whose two 1×2 canvases tie (the axis
# convention decides), extreme aspect both ways, an odd size (un-padding rounding), one larger than every canvas.
HD_SIZES = [(300, 200), (200, 300), (224, 224), (100, 100), (600, 90), (90, 600), (333, 197), (520, 390)]
LLAVA_SIZES = [(300, 200), (200, 300), (150, 150), (640, 96)]


def _image(size, seed=0):
    return probe_image(S, size, seed=seed)


def _save(tmp_path_factory, name, method, **kwargs):
    model, processor = build_tiny(method, **SMALL, **kwargs)
    src = tmp_path_factory.mktemp(name) / "model"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    return src


def _exported(tmp_path_factory, name, method, verify=True, **kwargs):
    import transformers
    from transformers import AutoProcessor

    src = _save(tmp_path_factory, name, method, **kwargs)
    out = src.parent / "hf"
    report = export_model(src, out, verify=verify)
    model, processor = load_model(src, "cpu")
    hf_model = getattr(transformers, report["architecture"]).from_pretrained(out).eval()
    return SimpleNamespace(src=src, out=out, report=report, model=model, processor=processor, hf_model=hf_model,
                           hf_processor=AutoProcessor.from_pretrained(out))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    return _exported(tmp_path_factory, "hd", "llava_hd")


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    return _exported(tmp_path_factory, "llava", "llava")


def _assert_same(e, size):
    c = compare(e.model, e.processor, e.hf_model, e.hf_processor, _image(size, seed=sum(size)))
    assert c.image_size == size
    assert c.input_ids_match, c.text_difference
    assert c.max_abs_dpixels is not None and c.max_abs_dpixels <= TOL_PIXELS
    assert c.max_abs_dlogits is not None and c.max_abs_dlogits <= TOL_LOGITS, c
    assert c.max_abs_dlogits_same_pixels <= TOL_LOGITS, c
    return c


# ---------------------------------------------------------------------- the grid convention
def test_pinpoints_pick_our_grid_for_every_size():
    from transformers.image_processing_utils import select_best_resolution

    from hires_vlm.imaging.grids import anyres_grid
    from hires_vlm.methods.llava import LLAVA_NEXT_GRIDS

    rng = random.Random(0)
    sizes = [(w, h) for w in range(1, 400, 7) for h in range(1, 400, 11)]
    sizes += [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(2000)]
    grids = [LLAVA_NEXT_GRIDS, ((1, 1), (2, 1), (1, 2), (2, 2), (3, 2), (2, 3), (4, 1), (1, 4))]
    for candidates in grids:
        pins = grid_pinpoints(candidates, S)
        for w, h in sizes:
            ph, pw = select_best_resolution((h, w), pins)  # transformers: (height, width)
            assert (pw // S, ph // S) == anyres_grid((w, h), candidates, S), (w, h, candidates)
    # the control: pinpoints copied without the flip pick the other canvas of a tie
    unflipped = [[c * S, r * S] for c, r in LLAVA_NEXT_GRIDS]
    ph, pw = select_best_resolution((100, 100), unflipped)
    assert (pw // S, ph // S) != anyres_grid((100, 100), LLAVA_NEXT_GRIDS, S)


# ---------------------------------------------------------------------- logits round trip
@pytest.mark.parametrize("size", HD_SIZES, ids=[f"{w}x{h}" for w, h in HD_SIZES])
def test_llava_hd_matches_llava_next(hd, size):
    c = _assert_same(hd, size)
    assert c.visual_tokens == hd.model.max_visual_tokens(size)


@pytest.mark.parametrize("size", LLAVA_SIZES, ids=[f"{w}x{h}" for w, h in LLAVA_SIZES])
def test_llava_matches_llava(llava, size):
    c = _assert_same(llava, size)
    assert c.visual_tokens == (S // 14) ** 2


def test_llava_squash_variant(tmp_path_factory):
    e = _exported(tmp_path_factory, "squash", {"name": "llava", "global_view": "squash"}, verify=False)
    assert e.report["image_processor"]["do_pad"] is False
    for size in [(300, 200), (90, 400)]:
        _assert_same(e, size)


def test_wrong_tile_arrangement_is_caught(hd):
    """The comparison can fail: LlavaNext with pinpoints copied unflipped lays a 100×100 image's two
    tiles side by side instead of stacked — the same token count, other logits."""
    import transformers

    wrong = transformers.LlavaNextForConditionalGeneration.from_pretrained(hd.out).eval()
    wrong.config.image_grid_pinpoints = [[p[1], p[0]] for p in wrong.config.image_grid_pinpoints]
    c = compare(hd.model, hd.processor, wrong, hd.hf_processor, _image((100, 100)))
    assert c.max_abs_dlogits_same_pixels > 1e3 * TOL_LOGITS


def test_greedy_generation_agrees(hd):
    image = _image((333, 197))
    ours = hd.processor(["Describe the image."], [image])
    mine = hd.model.generate(**ours, max_new_tokens=4, do_sample=False)
    msgs = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "\nDescribe the image."}]}]
    inputs = hd.hf_processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                 return_tensors="pt")
    theirs = hd.hf_model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert theirs[0, inputs["input_ids"].shape[1]:].tolist() == mine[0].tolist()


# ---------------------------------------------------------------------- documented differences
def test_vicuna_prompt_tokenises_differently_but_computes_the_same(tmp_path_factory):
    """Our encoder tokenises template pieces one by one; transformers the rendered template whole. With
    vicuna_v1 the ids part where a piece starts with a space-joined word (" USER", " ASSISTANT");
    on the same ids and pixels the two models agree."""
    e = _exported(tmp_path_factory, "vicuna", "llava_hd", template="vicuna_v1")
    check = e.report["verification"]
    assert check["passed"] and not check["input_ids_match"] and check["notes"]
    c = compare(e.model, e.processor, e.hf_model, e.hf_processor, _image((300, 200)))
    assert not c.input_ids_match
    assert c.text_difference["ours"][1:3] == ["\u0120", "USER"] and c.text_difference["transformers"][1] == "\u0120USER"
    assert c.max_abs_dlogits <= TOL_LOGITS and c.max_abs_dlogits_same_pixels <= TOL_LOGITS


def test_torch_resampler_differs_only_in_pixels(tmp_path_factory):
    """A model trained on our 'torch' resampler meets transformers' PIL image processor (no torchvision
    here): its views differ by the resamplers' rounding, the models by nothing."""
    e = _exported(tmp_path_factory, "torchpx", "llava_hd", image_resampler="torch")
    check = e.report["verification"]
    assert check["passed"] and not check["full_pipeline_comparable"]
    c = compare(e.model, e.processor, e.hf_model, e.hf_processor, _image((300, 200)))
    two_grey_levels = 2 / 255 / min(e.model.config.image_std)
    assert c.input_ids_match and 0 < c.max_abs_dpixels <= two_grey_levels
    assert c.max_abs_dlogits_same_pixels <= TOL_LOGITS


# ---------------------------------------------------------------------- report, CLI, refusals, safety
def test_export_report(hd):
    report = json.loads((hd.out / REPORT_FILE).read_text())
    assert report["format"] == "llava_hf" and report["architecture"] == "LlavaNextForConditionalGeneration"
    assert report["source"]["fingerprint"] == model_fingerprint(hd.src)
    import transformers

    assert report["transformers_version"] == transformers.__version__
    assert sum(r["tensors"] for r in report["weights"]) == len(hd.model.state_dict())
    assert report["config"]["image_grid_pinpoints"] == [[224, 112], [112, 224], [224, 224], [112, 336], [336, 112]]
    assert report["config"]["vision_feature_select_strategy"] == "default"
    check = report["verification"]
    assert check["passed"] and check["input_ids_match"] and check["max_abs_dlogits"] <= TOL_LOGITS
    from safetensors import safe_open

    with safe_open(hd.out / "model.safetensors", "pt") as f:  # the llava-hf Hub layout, which every loader reads
        names = set(f.keys())
    hub = ("vision_tower.vision_model.", "language_model.model.", "language_model.lm_head.",
           "multi_modal_projector.linear_1.", "multi_modal_projector.linear_2.", "image_newline")
    assert all(n.startswith(hub) for n in names) and all(any(n.startswith(p) for n in names) for p in hub)
    files = sorted(os.listdir(hd.out))
    assert files == report["files"] and "model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth"))]
    cfg = json.loads((hd.out / "processor_config.json").read_text())
    assert cfg["processor_class"] == "LlavaNextProcessor" and cfg["num_additional_image_tokens"] == 1
    assert hd.hf_processor.tokenizer.convert_tokens_to_ids("<image>") == hd.model.config.image_token_id


def test_cli_end_to_end(hd, tmp_path, capsys):
    from hires_vlm.export import FORMATS
    from hires_vlm.export.cli import FORMAT_CHOICES

    assert FORMAT_CHOICES == FORMATS
    out = tmp_path / "cli-out"
    assert main(["export", "--format", "llava_hf", "--model", str(hd.src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "LlavaNextForConditionalGeneration" in text and "self-test" in text
    assert json.loads((out / REPORT_FILE).read_text())["verification"]["passed"]
    assert main(["export", "--format", "llava_hf", "--model", str(hd.src), "--out", str(out), "--no-verify"]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["slime", "inf_llava", "monkey"])
def test_refuses_methods_transformers_lacks(tmp_path_factory, method, capsys):
    src = _save(tmp_path_factory, f"refuse-{method}", method)
    out = src.parent / "hf"
    with pytest.raises(ExportRefused, match=f"method '{method}' cannot be exported as llava_hf: .*no .*architecture"):
        export_model(src, out)
    assert not out.exists() and sorted(os.listdir(src.parent)) == ["model"]
    assert main(["export", "--format", "llava_hf", "--model", str(src), "--out", str(out)]) == 2
    assert "vLLM" in capsys.readouterr().err


@pytest.mark.parametrize("change, reason", [
    ({"newline": False}, "newline=False"), ({"unpad": False}, "unpad=False"),
    ({"global_view": "pad"}, "global_view='pad'"), ({"projector": "linear"}, "projector='linear'"),
])
def test_refuses_llava_hd_variants_without_equivalent(change, reason):
    with pytest.raises(ExportRefused, match=reason):
        check_exportable({"name": "llava_hd", **change})
    check_exportable({"name": "llava_hd", "grid_candidates": [[1, 1], [2, 2], [4, 1]]})  # any grid is fine


def test_never_overwrites_and_keeps_the_old_folder(hd, tmp_path, monkeypatch):
    from hires_vlm.export import api

    out = tmp_path / "occupied"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError):
        export_model(hd.src, out, verify=False)
    assert os.listdir(out) == ["mine.txt"]
    monkeypatch.setattr(api, "SHARD_SIZE", "300KB")  # and sharded: the index follows the Hub names
    report = export_model(hd.src, out, overwrite=True, verify=False)
    assert len([f for f in report["files"] if f.endswith(".safetensors")]) > 1
    import transformers

    again = transformers.LlavaNextForConditionalGeneration.from_pretrained(out).state_dict()
    assert all(torch.equal(again[k], v) for k, v in hd.hf_model.state_dict().items())
    aside = tmp_path / os.path.basename(report["replaced_previous"])
    assert aside.name.startswith("occupied.replaced-") and (aside / "mine.txt").read_text() == "keep me"
    assert (out / "model.safetensors.index.json").is_file() and not (out / "mine.txt").exists()
    assert sorted(os.listdir(tmp_path)) == sorted(["occupied", aside.name])  # no staging folder left
    (tmp_path / "empty").mkdir()
    export_model(hd.src, tmp_path / "empty", verify=False)  # an empty folder is not "occupied"
    with pytest.raises(ValueError, match="overlaps the source"):
        export_model(hd.src, hd.src / "inside", verify=False)


def test_failed_self_test_writes_nothing(hd, tmp_path, monkeypatch):
    from hires_vlm.export import api

    monkeypatch.setattr(api, "tolerance", lambda dtype, scale: -1.0)
    with pytest.raises(ExportVerificationError, match="does not reproduce its source"):
        export_model(hd.src, tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_exports_import_back(hd, tmp_path):
    """Our llava_hf importer reads the export into the model it came from (the two conventions agree)."""
    from hires_vlm.importers import import_checkpoint

    result = import_checkpoint("llava_hf", str(hd.out), str(tmp_path / "back"))
    assert result.model.config.method == hd.model.config.method
    theirs = result.model.state_dict()
    for name, tensor in hd.model.state_dict().items():
        assert torch.equal(theirs[name], tensor), name


def test_exif_orientation_agrees_when_transformers_opens_the_file(hd, tmp_path):
    """Our processor turns every image upright; transformers only an image it opens itself (a path in the
    message), not a PIL image it is handed — the documented difference, both sides of it."""
    from hires_vlm.imaging import load_image

    image = _image((300, 200))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    path = tmp_path / "exif6.png"
    image.save(path, exif=exif)
    mine = hd.processor(["x"], [load_image(path)])
    assert mine["image_sizes"].tolist() == [[200, 300]]  # upright
    ours = mine["pixel_values"]

    def theirs(part):
        msgs = [{"role": "user", "content": [{"type": "image", **part}, {"type": "text", "text": "\nx"}]}]
        return hd.hf_processor.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True,
                                                   return_tensors="pt")["pixel_values"][0]

    assert (theirs({"path": str(path)}) - ours).abs().max() <= TOL_PIXELS
    with Image.open(path) as handed:
        assert (theirs({"image": handed}) - ours).abs().max() > 0.1


def test_probe_image_is_deterministic():
    a, b = np.asarray(probe_image(S)), np.asarray(probe_image(S))
    assert a.shape == (S + S // 2 + 3, 2 * S + S // 3 + 5, 3) and (a == b).all()
    assert isinstance(probe_image(S, (7, 5)), Image.Image)
