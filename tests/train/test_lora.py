"""LoRA: target modules across the whole model (connector, vision tower), freezing consistent with
them, merged saves, and adapter-only saves that load back onto their base with the same logits."""

import copy
import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

import hires_vlm
from hires_vlm.train.config import ConfigError, load_config
from hires_vlm.train.lora import apply_lora, load_lora_output, merge_lora, resolve_targets
from hires_vlm.train.runner import load_stage_model, run_training, set_trainable
from tests.model.test_model import IMAGES, _train_batch

pytest.importorskip("peft")
CONFIG = os.path.join(os.path.dirname(hires_vlm.__file__), "configs", "llava", "tiny.yaml")
CONV = [[{"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": "red"}]] * 2


@pytest.fixture(scope="module")
def llava():
    from hires_vlm.tiny import build_tiny

    return build_tiny("llava")


def _layers(model, prefix):
    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith(prefix)]


def test_plain_names_stay_in_the_language_model_and_component_names_reach_everywhere(llava):
    model, _ = llava
    lm_q = [n for n in _layers(model, "language_model.") if n.endswith(".q_proj")]
    tower_q = [n for n in _layers(model, "vision_tower.") if n.endswith(".q_proj")]
    assert lm_q and tower_q
    assert resolve_targets(model, ["q_proj"]) == lm_q  # the tower's q_proj too would change old configs
    assert resolve_targets(model, ["vision_tower.*.q_proj"]) == tower_q
    assert resolve_targets(model, ["connector.*"]) == resolve_targets(model, ["connector"]) == \
        ["connector.projector.0", "connector.projector.2"]
    lm_out = "language_model.lm_head"
    every = resolve_targets(model, "all-linear")
    assert every == [n for n in _layers(model, "language_model.") if n != lm_out]
    assert resolve_targets(model, ["language_model"]) == every  # the output layer only when named itself
    assert resolve_targets(model, ["q_proj", "language_model.*.q_proj"]) == lm_q  # each layer once


def test_the_output_projection_of_multihead_attention_is_left_out():
    from hires_vlm.tiny import build_tiny

    model, _ = build_tiny({"preset": "slime", "local_queries": 16, "resampler_heads": 4}, text_layers=1, vision_layers=1)
    got = resolve_targets(model, ["connector.*"])
    mha = [n for n, m in model.named_modules() if isinstance(m, torch.nn.MultiheadAttention)]
    assert mha and got and not any(g.startswith(tuple(mha)) for g in got)


@pytest.mark.parametrize("targets,message", [
    (["conector.*"], "matches no module of the model; close names: ['connector']"),
    (["qproj"], "close names: ['q_proj'"),
    (["vision_tower.*.qproj"], "'vision_tower.*.qproj' matches no module"),
    (["vision_tower.*.layer_norm1"], "but no linear layer; LoRA adapts linear layers"),
])
def test_a_name_that_selects_no_linear_layer_is_an_error(llava, targets, message):
    with pytest.raises(ConfigError) as err:
        resolve_targets(llava[0], targets)
    assert message in str(err.value)


def test_lora_on_a_frozen_tower_trains_only_its_adapters(llava):
    model, proc = copy.deepcopy(llava[0]), llava[1]
    lrs = set_trainable(model, {"connector": 1e-3})
    lrs.update(apply_lora(model, {"r": 2, "lr": 5e-4, "target_modules": ["vision_tower.*.q_proj", "q_proj"]}))
    for n, p in model.named_parameters():
        if ".lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)  # so that lora_A gets a gradient too
    model.train()
    model(**_train_batch(proc, CONV, IMAGES[:2])).loss.backward()
    # vision_feature_layer = -2: the tower's last layer is never run
    unused = f"vision_tower.model.encoder.layers.{model.vision_tower.model.config.num_hidden_layers - 1}."
    for n, p in model.named_parameters():
        adapter = ".lora_" in n
        trains = adapter or n.startswith("connector.")
        assert p.requires_grad == trains, n
        assert (p.grad is not None) == (trains and not n.startswith(unused)), n
        assert (lrs.get(n) == 5e-4) == adapter and (n in lrs) == trains, n
    assert any(n.startswith("vision_tower.") and ".lora_" in n and p.grad is not None
               for n, p in model.named_parameters())


def test_lora_may_not_go_on_a_layer_that_trains_in_full(llava):
    model = copy.deepcopy(llava[0])
    set_trainable(model, {"connector": 1e-3})
    with pytest.raises(ConfigError, match="must not also train the layers that get adapters: \\['connector.projector.0'"):
        apply_lora(model, {"r": 2, "lr": 1e-4, "target_modules": ["connector.*"]})


def test_merging_adapters_everywhere_keeps_the_logits_and_the_parameter_names(llava):
    model, proc = copy.deepcopy(llava[0]), llava[1]
    names = [n for n, _ in model.named_parameters()]
    set_trainable(model, {"language_model.lm_head": 1e-3})
    apply_lora(model, {"r": 2, "lr": 1e-4, "target_modules": ["q_proj", "vision_tower.*.q_proj", "connector.*"]})
    for n, p in model.named_parameters():
        if ".lora_B" in n:
            torch.nn.init.normal_(p, std=0.05)
    batch = _train_batch(proc, CONV, IMAGES[:2])
    model.eval()
    with torch.no_grad():
        before = model(**batch).logits
        merge_lora(model)
        after = model(**batch).logits
    assert [n for n, _ in model.named_parameters()] == names and not hasattr(model, "peft_config")
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)


class _Logits(TrainerCallback):
    """The trained model's logits on a fixed batch, taken as the stage ends (adapters not merged)."""

    def __init__(self, batch):
        self.batch, self.logits = batch, None

    def on_train_end(self, args, state, control, model=None, **kw):
        model.eval()
        with torch.no_grad():
            self.logits = model(**self.batch).logits
        model.train()


@pytest.mark.slow
def test_an_adapter_save_loads_back_onto_its_base_with_the_same_logits(tiny_data, tmp_path, llava):
    sets = [f"run.output_dir={tmp_path}", f"data.train={tiny_data}", f"data.image_folder={os.path.dirname(tiny_data)}",
            "stages.0.training.max_steps=3", "training.per_device_train_batch_size=2", "training.logging_steps=1",
            "stages.0.template=chatml",
            "stages.0.lora={r: 4, alpha: 8, lr: 1e-2, save: adapter, target_modules: [q_proj, v_proj, vision_tower.*.q_proj]}"]
    cfg = load_config(CONFIG, sets)
    base, proc = load_stage_model(cfg, 0, tiny_data)
    batch = _train_batch(proc, CONV, IMAGES[:2])
    watch = _Logits(batch)
    run_training(cfg, stages=["pretrain"], callbacks=[watch])
    final = tmp_path / "pretrain" / "final"
    files = set(os.listdir(final))
    assert {"adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.safetensors", "config.json",
            "hires_lora.json", "tokenizer.json"} <= files and "model.safetensors" not in files
    assert json.loads((final / "hires_lora.json").read_text())["base"] == os.path.join("..", "base")
    assert (tmp_path / "pretrain" / "base" / "model.safetensors").is_file()  # the tiny model it started from
    adapter = load_file(str(final / "adapter_model.safetensors"))
    assert any(k.startswith("vision_tower.") for k in adapter) and any(k.startswith("language_model.") for k in adapter)
    assert all(".lora_A." in k or ".lora_B." in k for k in adapter)
    others = load_file(str(final / "non_lora_trainables.safetensors"))
    assert set(others) == {n for n, _ in llava[0].named_parameters() if n.startswith("connector.")}

    unmerged = load_lora_output(final, merge=False)
    assert any(".lora_" in n for n, _ in unmerged.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(unmerged(**batch).logits, watch.logits, atol=1e-5, rtol=1e-5)
        merged = load_lora_output(final)
        assert not any(".lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(**batch).logits, watch.logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(base.eval()(**batch).logits, watch.logits, atol=1e-3)  # training changed it
        # the next stage starts from the adapter output, merged
        following, _ = load_stage_model(cfg, 1, tiny_data)
        torch.testing.assert_close(following.eval()(**batch).logits, watch.logits, atol=1e-4, rtol=1e-4)
        # what generate / eval / serve read: the same folder through load_model
        from hires_vlm.model import load_model

        served, _ = load_model(final, device="cpu")
        torch.testing.assert_close(served(**batch).logits, watch.logits, atol=1e-4, rtol=1e-4)
    # a rerun skips the finished stage
    (again,) = run_training(load_config(CONFIG, sets), stages=["pretrain"])
    assert again.skipped


def test_lora_save_must_be_merged_or_adapter(tmp_path):
    with pytest.raises(ConfigError, match="lora.save='full' is not valid; choose 'merged'"):
        load_config(CONFIG, [f"run.output_dir={tmp_path}",
                             "stages.0.lora={r: 2, lr: 1e-4, target_modules: [q_proj], save: full}"])
