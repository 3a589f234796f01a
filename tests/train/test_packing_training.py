"""Training with ``packing`` and ``group_by_modality_length``: the config keys, the trainer's batches and
loss, and a stage trained packed computing the losses a padded one computes."""

import json
import os

import pytest
import torch
from PIL import Image

import hires_vlm
from hires_vlm.data.llava_json import LlavaCollator, LlavaDataset
from hires_vlm.train.arguments import training_arguments
from hires_vlm.train.config import ConfigError, from_dict, load_config
from hires_vlm.train.runner import run_training
from hires_vlm.train.trainer import _make_trainer_class

SMALL_TINY = {"vision_hidden": 32, "vision_layers": 1, "text_hidden": 64, "text_layers": 1, "vocab_size": 300}

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = os.path.join(os.path.dirname(hires_vlm.__file__), "configs", "llava_hd", "tiny.yaml")


def _raw(training=None, stage_training=None):
    stage = {"name": "s", "trainable": {"connector": 1e-3}, "training": stage_training or {}}
    return {"run": {"output_dir": "x"}, "model": {"method": "llava"}, "training": training or {}, "stages": [stage]}


def test_the_keys_are_read_and_kept_out_of_the_training_arguments(tmp_path):
    cfg = from_dict(_raw({"packing": True, "group_by_modality_length": True}, {"length_grouping_batches": 16}))
    stage = cfg.stages[0]
    assert cfg.stage_training(stage) == {"packing": True, "group_by_modality_length": True,
                                         "length_grouping_batches": 16}
    args = training_arguments(cfg, stage, str(tmp_path), {"p": 1e-3})
    assert not any(hasattr(args, k) for k in ("packing", "group_by_modality_length", "length_grouping_batches"))


@pytest.mark.parametrize("training,stage_training,message", [
    ({"packing": "yes"}, None, "training.packing must be true or false or null, got 'yes'"),
    ({"group_by_modality_length": True, "train_sampling_strategy": "group_by_length"}, None,
     "cannot be combined with train_sampling_strategy='group_by_length'"),
    ({"group_by_modality_length": True}, {"train_sampling_strategy": "sequential"},
     "stage 's' (run training + stages[0].training): group_by_modality_length draws its own batches"),
    ({"group_by_modality_length": True, "length_grouping_batches": 0}, None,
     "length_grouping_batches must be a positive number of batches"),
    ({"length_grouping_batches": 4}, None, "sizes the groups of group_by_modality_length, which is off"),
])
def test_bad_packing_and_grouping_keys_say_what_is_wrong(training, stage_training, message):
    with pytest.raises(ConfigError) as err:
        from_dict(_raw(training, stage_training))
    assert message in str(err.value)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A dataset of image and text-only records of varied lengths, a tiny model and its processor."""
    from hires_vlm.tiny import build_tiny

    root = tmp_path_factory.mktemp("mixed_train")
    recs = []
    for i in range(22):
        if i % 4 == 3:
            recs.append({"id": f"t{i}", "conversations": [{"from": "human", "value": "tell me " * (i + 1)},
                                                         {"from": "gpt", "value": "fine " * (i % 5 + 1)}]})
            continue
        size = [(224, 224), (300, 200), (200, 300), (336, 168)][i % 4]
        Image.new("RGB", size, (i * 10, 80, 160)).save(root / f"{i}.png")
        recs.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "blue"}]})
    with open(root / "train.json", "w") as f:
        json.dump(recs, f)
    model, proc = build_tiny("llava_hd", **SMALL_TINY)
    return LlavaDataset(str(root / "train.json"), str(root), proc), model, proc


def _trainer(mixed, tmp_path, group=True, packing=False, **args):
    from transformers import TrainingArguments

    ds, model, proc = mixed
    cls = _make_trainer_class()
    cls.group_by_modality_length = group
    targs = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none",
                              remove_unused_columns=False, use_cpu=True, **args)
    return cls(model=model, args=targs, train_dataset=ds,
               data_collator=LlavaCollator(proc.tokenizer.pad_token_id, ds, packing=packing))


def test_the_trainer_draws_modality_pure_batches(mixed, tmp_path):
    trainer = _trainer(mixed, tmp_path, gradient_accumulation_steps=2)
    ds = mixed[0]
    loader = trainer.get_train_dataloader()
    sampler = trainer.modality_length_sampler()
    assert sampler.group == 2  # one optimizer step: ranks × accumulation steps, as LLaVA
    batches = list(loader)
    assert len(batches) == len(loader) == len(sampler)
    assert sum(b["input_ids"].shape[0] for b in batches) == len(ds)
    assert all(images in (0, n) for images, n in _image_counts(batches))  # every sample has its image, or none
    assert any("image_sizes" not in b for b in batches) and any("image_sizes" in b for b in batches)
    trainer.length_grouping_batches = 5
    assert trainer.modality_length_sampler().group == 5


def _image_counts(batches):
    return [(b["image_sizes"].shape[0] if "image_sizes" in b else 0, b["input_ids"].shape[0]) for b in batches]


def test_without_grouping_the_trainer_keeps_its_own_sampler_and_mixes(mixed, tmp_path):
    from hires_vlm.data.sampling import ModalityLengthGroupedBatchSampler

    trainer = _trainer(mixed, tmp_path, group=False, seed=0)
    loader = trainer.get_train_dataloader()
    inner = getattr(loader.batch_sampler, "batch_sampler", loader.batch_sampler)
    assert not isinstance(inner, ModalityLengthGroupedBatchSampler)
    assert any(0 < images < n for images, n in _image_counts(loader))  # what grouping prevents


def test_training_steps_ask_for_labelled_logits_only_and_evaluation_does_not(mixed, tmp_path):
    trainer = _trainer(mixed, tmp_path, packing=True)
    ds, model, proc = mixed
    seen = []
    original = type(model).forward

    def spy(self, *a, **kw):
        seen.append((self.training, kw.get("labelled_logits_only", False), kw.get("packing", False)))
        return original(self, *a, **kw)

    batch = LlavaCollator(proc.tokenizer.pad_token_id, ds, packing=True)([ds[0], ds[1], ds[3]])
    type(model).forward = spy
    try:
        model.train()
        loss = trainer.compute_loss(model, dict(batch))
        model.eval()
        with torch.no_grad():
            trainer.compute_loss(model, dict(batch))
    finally:
        type(model).forward = original
        model.train()
    assert torch.isfinite(loss)
    assert seen == [(True, True, True), (False, False, True)]


@pytest.mark.slow
def test_a_packed_stage_trains_and_evaluates_with_the_losses_of_a_padded_one(tmp_path, tiny_data):
    """Same data, order and seed: packing changes what the LM sees, not what it learns (≈15 s)."""
    common = [f"data.train={tiny_data}", f"data.image_folder={os.path.dirname(tiny_data)}",
              f"data.eval={tiny_data}", "data.eval_limit=6", "training.eval_steps=2",
              "stages.0.training.max_steps=4", "training.logging_steps=1", "training.per_device_train_batch_size=4"]
    histories, evals = {}, {}
    for name, extra in (("padded", []), ("packed", ["training.packing=true"])):
        cfg = load_config(CONFIG, [f"run.output_dir={tmp_path / name}", *common, *extra])
        run_training(cfg, stages=["pretrain"])
        with open(tmp_path / name / "pretrain" / "log_history.json") as f:
            histories[name] = [h["loss"] for h in json.load(f) if "loss" in h]
        with open(tmp_path / name / "pretrain" / "eval_history.json") as f:
            evals[name] = [h["eval_loss"] for h in json.load(f) if "eval_loss" in h]
        stage = json.loads((tmp_path / name / "pretrain" / "final" / "training_stage.json").read_text())
        assert stage["training"].get("packing", False) == (name == "packed")
    assert len(histories["padded"]) == 4 and len(evals["padded"]) == 2
    assert histories["packed"] == pytest.approx(histories["padded"], rel=1e-4)
    assert evals["packed"] == pytest.approx(evals["padded"], rel=1e-4)


@pytest.mark.slow
def test_a_grouped_packed_stage_resumes_exactly(tmp_path, mixed, assert_same_final_weights):
    """An interrupted stage with both switches on resumes with the batches it would have drawn (≈15 s)."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 4:
                control.should_save = control.should_training_stop = True

    ds = mixed[0]
    sets = [f"data.train={ds.source}", f"data.image_folder={ds.image_folder}", "stages.0.training.max_steps=6",
            "training.save_steps=2", "training.per_device_train_batch_size=4", "training.packing=true",
            "training.group_by_modality_length=true", "training.length_grouping_batches=3"]
    a = load_config(CONFIG, [f"run.output_dir={tmp_path / 'a'}", *sets])
    run_training(a, stages=["pretrain"])
    b = load_config(CONFIG, [f"run.output_dir={tmp_path / 'b'}", *sets])
    run_training(b, stages=["pretrain"], callbacks=[StopAt()])
    import shutil

    shutil.rmtree(tmp_path / "b" / "pretrain" / "final")  # "killed" after step 4's checkpoint
    run_training(b, stages=["pretrain"])
    assert_same_final_weights(tmp_path / "a" / "pretrain", tmp_path / "b" / "pretrain")


def test_a_stage_whose_language_model_cannot_pack_is_refused_before_training(tmp_path, tiny_data, monkeypatch):
    from hires_vlm.model import packing

    def refuse(model):
        raise packing.PackingError("packing cannot keep samples apart with the attention implementation 'x'")

    monkeypatch.setattr(packing, "enable_packing", refuse)
    cfg = load_config(CONFIG, [f"run.output_dir={tmp_path}", f"data.train={tiny_data}",
                               f"data.image_folder={os.path.dirname(tiny_data)}", "training.packing=true"])
    with pytest.raises(ConfigError, match="stage 'pretrain': training.packing: packing cannot keep samples apart"):
        run_training(cfg, stages=["pretrain"])
    assert not (tmp_path / "pretrain" / "final").exists()
