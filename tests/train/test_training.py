"""Training end to end on the tiny model: stages, freezing, checkpoints, exact resume, generate."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import TrainerCallback

import hires_vlm
from hires_vlm.cli import main
from hires_vlm.train.config import load_config
from hires_vlm.train.runner import COMPLETE_MARKER, latest_complete_checkpoint, run_training, set_trainable

CONFIG = os.path.join(os.path.dirname(hires_vlm.__file__), "configs", "llava_hd", "tiny.yaml")


def _cfg(tmp_path, data, *extra):
    return load_config(CONFIG, [f"run.output_dir={tmp_path}", f"data.train={data}",
                                f"data.image_folder={os.path.dirname(data)}", *extra])


@pytest.mark.slow
def test_cli_trains_both_stages_loss_falls_and_generate_answers(tmp_path, tiny_data, capsys):
    args = ["train", CONFIG, "--set", f"run.output_dir={tmp_path}", "--set", f"data.train={tiny_data}",
            "--set", f"data.image_folder={os.path.dirname(tiny_data)}",
            "--set", "stages.0.training.max_steps=4", "--set", "stages.1.training.max_steps=24",
            "--set", "training.logging_steps=2", "--set", "training.save_steps=12"]
    rc = main(args)
    assert rc == 0
    final = tmp_path / "sft" / "final"
    assert (final / "model.safetensors").exists() and (final / "tokenizer.json").exists()
    assert (tmp_path / "config.yaml").exists() and (tmp_path / "sft" / "loss.png").exists()
    hist = [h["loss"] for h in json.loads((tmp_path / "sft" / "log_history.json").read_text()) if "loss" in h]
    assert hist[-1] < hist[0] * 0.7, hist
    comp = (tmp_path / "pretrain" / "components.txt").read_text()
    assert "vision_tower" in comp and "frozen" in comp and "language_model" in comp
    capsys.readouterr()
    img = os.path.join(os.path.dirname(tiny_data), "img", "0.png")
    assert main(["generate", "--model", str(final), "--image", img, "--prompt", "What colour is the circle?"]) == 0
    answer = capsys.readouterr().out.strip()
    assert answer in {"red", "green", "blue"}, answer
    # A rerun of the same command skips finished stages (a changed one is refused: test_data_safety).
    assert main(args) == 0
    assert "already done" in capsys.readouterr().out


class _StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


@pytest.mark.slow
def test_interrupted_stage_resumes_exactly(tmp_path, tiny_data, assert_same_final_weights):
    common = ["stages.0.training.max_steps=6", "training.save_steps=3", "training.logging_steps=1"]
    a = _cfg(tmp_path / "a", tiny_data, *common)
    run_training(a, stages=["pretrain"])
    b = _cfg(tmp_path / "b", tiny_data, *common)
    run_training(b, stages=["pretrain"], callbacks=[_StopAt(4)])  # "killed" after step 4's checkpoint
    import shutil

    shutil.rmtree(tmp_path / "b" / "pretrain" / "final")  # the interrupted run must not count as finished
    assert latest_complete_checkpoint(str(tmp_path / "b" / "pretrain")).endswith("checkpoint-4")
    run_training(b, stages=["pretrain"])
    assert_same_final_weights(tmp_path / "a" / "pretrain", tmp_path / "b" / "pretrain")
    la = [h["loss"] for h in json.loads((tmp_path / "a" / "pretrain" / "log_history.json").read_text()) if "loss" in h]
    lb = [h["loss"] for h in json.loads((tmp_path / "b" / "pretrain" / "log_history.json").read_text()) if "loss" in h]
    assert la[-2:] == pytest.approx(lb[-2:], rel=1e-5)


@pytest.mark.slow
def test_a_bad_record_is_dropped_not_duplicated_and_counted_once_across_a_resume(tmp_path):
    """A corrupt image, met in 3 epochs and across an interruption, is one skipped record; batches
    that met it are one sample shorter instead of serving another record twice."""
    from tests.conftest import write_tiny_dataset

    root = tmp_path / "d"
    data = write_tiny_dataset(str(root), n=8)
    recs = json.loads(open(data).read())
    png = root / recs[3]["image"]
    png.write_bytes(png.read_bytes()[:60])  # truncated: found only when decoded
    recs.append({"id": "escape", "image": "../../x.png", "conversations": recs[0]["conversations"]})
    open(data, "w").write(json.dumps(recs))
    args = [f"run.output_dir={tmp_path / 'run'}", f"data.train={data}", f"data.image_folder={root}",
            "stages.0.training.max_steps=6", "stages.0.training.num_train_epochs=3",
            "training.per_device_train_batch_size=4", "training.save_steps=2", "training.logging_steps=1"]
    cfg = load_config(CONFIG, args)
    run_training(cfg, stages=["pretrain"], callbacks=[_StopAt(2)])
    import shutil

    shutil.rmtree(tmp_path / "run" / "pretrain" / "final")
    (res,) = run_training(load_config(CONFIG, args), stages=["pretrain"])
    skips = res.data_skips
    assert skips["screened"] == {"path_escape": 1}
    assert skips["at_load"] == {"bad_image": 1}  # once, though 3 epochs and a resume met it
    assert skips["records_skipped"] == 2 and skips["records"] == 9
    saved = json.loads((tmp_path / "run" / "pretrain" / "final" / "training_stage.json").read_text())
    assert saved["data_skips"]["at_load"] == {"bad_image": 1}


def test_the_collator_drops_failed_samples_instead_of_duplicating_others(tiny_data):
    from hires_vlm.data.llava_json import LlavaCollator, LlavaDataset, SkippedSample
    from hires_vlm.tiny import build_tiny

    _, proc = build_tiny("llava")
    ds = LlavaDataset(tiny_data, os.path.dirname(tiny_data), proc)
    col = LlavaCollator(proc.tokenizer.pad_token_id, ds)
    batch = col([ds[0], SkippedSample(5, "bad_image", "x"), ds[1]])
    assert batch["input_ids"].shape[0] == 2 and batch["skipped_records"] == [(5, "bad_image")]
    alone = col([SkippedSample(ds.index[4], "bad_image", "x")])  # a batch of failures: the next record stands in
    assert alone["input_ids"].shape[0] == 1
    assert torch.equal(alone["input_ids"][0, : len(ds[5]["input_ids"])], ds[5]["input_ids"])


def test_incomplete_checkpoints_are_set_aside(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-3").mkdir()
    (tmp_path / "checkpoint-3" / COMPLETE_MARKER).write_text("3")
    assert latest_complete_checkpoint(str(tmp_path)).endswith("checkpoint-3")
    assert not (tmp_path / "checkpoint-5").exists()


@pytest.mark.parametrize("trainable,expect", [
    ({"connector": 1e-3}, {"connector"}),
    ({"connector": 1e-3, "language_model": 2e-5}, {"connector", "language_model"}),
    ({"vision_tower": 1e-4, "connector.projector": 1e-3}, {"vision_tower", "connector.projector"}),
])
def test_exactly_the_trainable_parameters_get_gradients(trainable, expect, tiny_data):
    from tests.model.test_model import IMAGES, _train_batch
    from hires_vlm.tiny import build_tiny

    model, proc = build_tiny("llava_hd")
    lrs = set_trainable(model, trainable)
    model.train()
    conv = [[{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "red"}]] * 2
    model(**_train_batch(proc, conv, IMAGES[:2])).loss.backward()
    # With vision_feature_layer = -2 the tower's last layer and post-norm are never used.
    last = model.vision_tower.model.config.num_hidden_layers - 1
    unused = (f"vision_tower.model.encoder.layers.{last}.", "vision_tower.model.post_layernorm")
    for n, p in model.named_parameters():
        trains = any(n == e or n.startswith(e + ".") for e in expect)
        assert (p.grad is not None) == (trains and not n.startswith(unused)), n
        assert (n in lrs) == trains
    assert lrs["connector.projector.0.weight"] == trainable.get("connector.projector", trainable.get("connector"))


def test_unknown_trainable_prefix_is_an_error():
    from hires_vlm.tiny import build_tiny
    from hires_vlm.train.config import ConfigError

    with pytest.raises(ConfigError, match="matches no parameter"):
        set_trainable(build_tiny("llava")[0], {"conector": 1e-3})


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path, tiny_data):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "hires_vlm.cli", "train", CONFIG, "--stage", "pretrain",
           "--set", f"run.output_dir={tmp_path}", "--set", f"data.train={tiny_data}",
           "--set", f"data.image_folder={os.path.dirname(tiny_data)}", "--set", "stages.0.training.max_steps=3",
           "--set", "training.per_device_train_batch_size=2", "--set", "training.save_steps=2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((tmp_path / "pretrain" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert (tmp_path / "pretrain" / "final" / "model.safetensors").exists()
    assert (tmp_path / "pretrain" / "checkpoint-2" / COMPLETE_MARKER).exists()


def test_image_resampler_is_chosen_in_the_config_and_saved_with_the_model(tmp_path, tiny_data):
    from hires_vlm.model import HiResVLM, HiResVLMProcessor
    from hires_vlm.train.runner import load_stage_model

    cfg = _cfg(tmp_path / "run", tiny_data, "model.image_resampler=torch")
    model, proc = load_stage_model(cfg, 0, tiny_data)
    assert model.config.image_resampler == "torch"
    assert proc.imaging_spec.resampler.value == "torch" and model.image_processor.spec.resampler.value == "torch"
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    proc.save_pretrained(saved)
    assert HiResVLM.from_pretrained(saved).image_processor.spec.resampler.value == "torch"
    assert HiResVLMProcessor.from_pretrained(saved).imaging_spec.resampler.value == "torch"
    # a pretrained model keeps its resampler unless the config names another
    again = load_config(CONFIG, [f"run.output_dir={tmp_path / 'run2'}", f"data.train={tiny_data}",
                                 "model.source=pretrained", f"model.path={saved}", "model.method=keep"])
    m2, p2 = load_stage_model(again, 0, tiny_data)
    assert m2.config.image_resampler == "torch" and p2.imaging_spec.resampler.value == "torch"
    switched = load_config(CONFIG, [f"run.output_dir={tmp_path / 'run3'}", f"data.train={tiny_data}",
                                    "model.source=pretrained", f"model.path={saved}", "model.method=keep",
                                    "model.image_resampler=pillow"])
    m3, p3 = load_stage_model(switched, 0, tiny_data)
    assert m3.config.image_resampler == "pillow"
    assert p3.imaging_spec.resampler.value == "pillow" and m3.image_processor.spec.resampler.value == "pillow"
