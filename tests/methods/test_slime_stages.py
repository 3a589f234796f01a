"""SliME training recipes: every config under configs/slime and configs/monkey validates, and, stage
by stage, exactly the parameters that are trainable *and used* receive gradients (one backward
per stage on a tiny model with the recipe's method and run-time fields). LoRA through peft. One
slow end-to-end run of the official stages from the CLI, then generation."""

from __future__ import annotations

import copy
import glob
import json
import os

import pytest
import torch

from hires_vlm.train.config import load_config, validate
from hires_vlm.train.runner import apply_lora, merge_lora, set_trainable

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "..", "src", "hires_vlm", "configs")
TINY_METHOD = {"local_queries": 16, "resampler_heads": 4, "gate_bypass": "never"}  # the 8x8 tower: see configs/slime/tiny_*.yaml

# What must receive a gradient, per stage name: parameter-name prefixes (or "lora": the adapters).
PROJ, RES, WG, WN = "connector.projector", "connector.mixture.resampler", "connector.mixture.gate.w_gate", \
    "connector.mixture.gate.w_noise"
LOC, SEP, LM = "connector.local_compressor", "connector.separator", "language_model"
EXPECTED = {
    # official (gate noise uses W_g, so W_noise never gets a gradient; no learned separator)
    ("slime", "stage1a_mlp"): {PROJ},
    ("slime", "stage1b_resampler"): {RES},
    ("slime", "stage2_local"): {LOC},
    ("slime", "stage3_sft"): {LM, PROJ, RES, WG, LOC},
    ("slime", "stage3_sft_lora"): {"lora", PROJ, RES, WG, LOC},
    ("slime", "e2e"): {LM, PROJ, RES, WG, LOC},
    # paper (noise through W_noise; learned separator)
    ("slime-paper", "stage1_global"): {PROJ, RES, WG, WN},
    ("slime-paper", "stage2_local"): {LOC},
    ("slime-paper", "stage3_sft"): {LM, PROJ, RES, WG, WN, LOC, SEP},
    # monkey
    ("monkey", "pretrain"): {"connector.resampler", PROJ},
    ("monkey", "sft"): {"connector.resampler", PROJ, LM},
}


def _all_configs():
    return sorted(glob.glob(os.path.join(CONFIGS, "slime", "**", "*.yaml"), recursive=True)
                  + glob.glob(os.path.join(CONFIGS, "monkey", "**", "*.yaml"), recursive=True))


def _preset(path, cfg):
    m = cfg.model.method
    if isinstance(m, dict):
        return m["preset"]
    if m == "keep":  # real-size recipes start from a model built with the method of their file
        return "slime-paper" if "paper" in os.path.basename(path) else (
            "monkey" if "monkey" in path else "slime")
    return m


def test_every_config_validates():
    paths = _all_configs()
    names = {os.path.relpath(p, CONFIGS) for p in paths}
    assert {"slime/tiny_official.yaml", "slime/tiny_paper.yaml", "slime/tiny_e2e.yaml", "slime/official.yaml",
            "slime/official_lora.yaml", "slime/paper.yaml", "slime/e2e.yaml", "monkey/tiny.yaml"} <= names
    for p in paths:
        cfg = load_config(p)
        validate(cfg)
        for s in cfg.stages:
            assert s.template, f"{p}: stage {s.name} must name its template (a stage inherits the last one's)"
            assert (_preset(p, cfg), s.name) in EXPECTED, (p, s.name)


@pytest.fixture(scope="module")
def tiny_models(tiny_data):
    from hires_vlm.train.runner import corpus_from_records
    from hires_vlm.tiny import build_tiny

    corpus = corpus_from_records(tiny_data)
    out = {}
    for preset in ("slime", "slime-paper", "monkey"):
        over = {"queries": 16, "resampler_heads": 4} if preset == "monkey" else TINY_METHOD
        out[preset] = build_tiny({"preset": preset, **over}, corpus=corpus, seed=0, text_layers=1, vision_layers=1,
                                 vocab_size=400)
    return out


def _batch(model, processor, template, tiny_data):
    from hires_vlm.data.llava_json import LlavaCollator, LlavaDataset
    from hires_vlm.model import HiResVLMProcessor

    proc = HiResVLMProcessor(processor.tokenizer, model.config)
    ds = LlavaDataset(tiny_data, os.path.dirname(tiny_data), proc, template=template)
    return LlavaCollator(proc.tokenizer.pad_token_id)([ds[0], ds[1]])


def _stage_cases():
    """One case per distinct stage definition (the tiny and real-size recipes share most of them)."""
    groups: dict = {}
    for p in _all_configs():
        cfg = load_config(p)
        for i, s in enumerate(cfg.stages):
            key = (_preset(p, cfg), json.dumps([sorted(s.trainable), s.method_runtime, s.lora], sort_keys=True))
            groups.setdefault(key, []).append((p, i))
    return [pytest.param(members, id=" = ".join(f"{os.path.relpath(p, CONFIGS)}:{load_config(p).stages[i].name}"
                                               for p, i in members)) for members in groups.values()]


@pytest.mark.parametrize("members", _stage_cases())
def test_exactly_the_trainable_and_used_parameters_get_gradients(members, tiny_models, tiny_data):
    path, index = members[0]
    cfg = load_config(path)
    stage = cfg.stages[index]
    preset = _preset(path, cfg)
    for p, i in members:  # every recipe sharing this definition expects the same gradients
        assert EXPECTED[(_preset(p, load_config(p)), load_config(p).stages[i].name)] == \
            EXPECTED[(preset, stage.name)]
    base, processor = tiny_models[preset]
    model = copy.deepcopy(base)
    model.set_method_runtime(**stage.method_runtime)
    model.config.template = stage.template
    batch = _batch(model, processor, stage.template, tiny_data)
    set_trainable(model, stage.trainable)
    if stage.lora:
        apply_lora(model, stage.lora)
    model.train()
    torch.manual_seed(0)
    model(**batch).loss.backward()
    expected = EXPECTED[(preset, stage.name)]
    names = [n for n, _ in model.named_parameters()]

    def wanted(n):
        if "lora" in expected and ".lora_" in n:
            return True
        return any(n == e or n.startswith(e + ".") for e in expected if e != "lora")

    got = {n for n, p in model.named_parameters() if p.grad is not None}
    want = {n for n in names if wanted(n)}
    assert got == want, {"missing": sorted(want - got)[:8], "unexpected": sorted(got - want)[:8]}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got <= trainable
    assert not any(n.startswith("vision_tower") for n in got)


def test_lora_merge_keeps_outputs_and_saves_a_plain_model(tiny_models, tiny_data, tmp_path):
    from hires_vlm.model import HiResVLM

    base, processor = tiny_models["slime"]
    model = copy.deepcopy(base)
    set_trainable(model, {"connector": 1e-4})
    lrs = apply_lora(model, {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "lr": 3e-4})
    assert lrs and all(".lora_" in n and v == 3e-4 for n, v in lrs.items())
    with torch.no_grad():  # give the adapters a non-zero update
        for n, p in model.named_parameters():
            if ".lora_B" in n:
                p.normal_(std=0.05)
    batch = _batch(model, processor, "chatml", tiny_data)
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
    merge_lora(model)
    assert not any(".lora_" in n for n, _ in model.named_parameters())
    with torch.no_grad():
        after = model(**batch).logits
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = HiResVLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, after)


def test_lora_refuses_a_fully_trained_language_model(tiny_models):
    from hires_vlm.train.config import ConfigError

    model = copy.deepcopy(tiny_models["slime"][0])
    set_trainable(model, {"language_model": 1e-4})
    with pytest.raises(ConfigError, match="must not also"):
        apply_lora(model, {"r": 4, "target_modules": ["q_proj"], "lr": 1e-4})


@pytest.mark.parametrize("bad", [{"r": 0}, {"lr": -1}, {"target_modules": []}, {"rank": 4}, {"dropout": 1.5}])
def test_bad_lora_keys_are_refused(bad, tmp_path):
    import yaml

    from hires_vlm.train.config import ConfigError

    lora = {"r": 4, "lr": 1e-4, "target_modules": ["q_proj"], **bad}
    if "rank" in bad:
        del lora["r"]
    raw = {"run": {"output_dir": str(tmp_path)}, "model": {"method": "slime"},
           "stages": [{"name": "s", "trainable": {"connector": 1e-4}, "lora": lora}]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError):
        load_config(p)


@pytest.mark.slow
def test_tiny_official_stages_from_the_cli_then_generate(tiny_data, tmp_path, capsys):
    from safetensors.torch import load_file

    from hires_vlm.cli import main

    out = tmp_path / "run"
    cfg = os.path.join(CONFIGS, "slime", "tiny_official.yaml")
    sets = [f"data.train={tiny_data}", f"data.image_folder={os.path.dirname(tiny_data)}",
            "training.per_device_train_batch_size=2", "training.logging_steps=1"]
    sets += [f"stages.{i}.training.max_steps=2" for i in range(4)]
    argv = ["train", cfg, "--output-dir", str(out)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    names = ["stage1a_mlp", "stage1b_resampler", "stage2_local", "stage3_sft"]
    w = {n: load_file(str(out / n / "final" / "model.safetensors")) for n in names}

    def part(n, prefix):
        return {k: v for k, v in w[n].items() if k.startswith(prefix)}

    def same(a, b, prefix):
        pa, pb = part(a, prefix), part(b, prefix)
        return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)

    # each stage starts from the previous one's output and changes only what it trains
    assert not same("stage1a_mlp", "stage1b_resampler", "connector.mixture.resampler")
    assert same("stage1a_mlp", "stage1b_resampler", "connector.projector")
    assert same("stage1b_resampler", "stage2_local", "connector.mixture.resampler")
    assert same("stage1b_resampler", "stage2_local", "connector.projector")
    assert not same("stage1b_resampler", "stage2_local", "connector.local_compressor")
    assert same("stage1a_mlp", "stage2_local", "language_model")
    assert not same("stage2_local", "stage3_sft", "language_model")
    assert same("stage2_local", "stage3_sft", "vision_tower")
    final = json.loads((out / "stage3_sft" / "final" / "config.json").read_text())
    assert final["method"]["branches"] == "both" and final["method"]["gamma"] == 0.95
    assert final["template"] == "chatml"
    capsys.readouterr()
    img = os.path.join(os.path.dirname(tiny_data), "img", "0.png")
    assert main(["generate", "--model", str(out / "stage3_sft" / "final"), "--image", img,
                 "--prompt", "What colour is the circle?", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.endswith("\n")
