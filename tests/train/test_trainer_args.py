"""A stage's ``training:`` block takes any TrainingArguments field (checked, with clear errors); eval
during training (eval loss, answer accuracy, the curve beside loss.png) survives an interruption."""

import json
import math
import os
import shutil

import pytest
from transformers import TrainerCallback

import hires_vlm
from hires_vlm.train.arguments import RUNNER_KEYS, argument_specs, training_arguments
from hires_vlm.train.config import ConfigError, from_dict, load_config
from hires_vlm.train.runner import run_training

CONFIG = os.path.join(os.path.dirname(hires_vlm.__file__), "configs", "llava", "tiny.yaml")


def _raw(training=None, stage_training=None, data=None):
    stage = {"name": "s", "trainable": {"connector": 1e-3}}
    if stage_training is not None:
        stage["training"] = stage_training
    return {"run": {"output_dir": "x"}, "model": {"method": "llava"}, "data": data or {},
            "training": training or {}, "stages": [stage]}


def test_every_training_arguments_field_is_accepted_and_nothing_else():
    import dataclasses

    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    specs = argument_specs()
    assert fields - set(RUNNER_KEYS) <= set(specs)
    assert set(specs) - fields <= {"warmup_ratio", "logging_dir", "gradient_checkpointing", "activation_checkpointing",
                                   "gradient_checkpointing_kwargs", "activation_checkpointing_kwargs",
                                   "packing", "group_by_modality_length", "length_grouping_batches", "feature_cache"}
    cfg = from_dict(_raw({"label_smoothing_factor": 0.1, "dataloader_drop_last": True, "eval_on_start": False,
                          "train_sampling_strategy": "sequential", "optim": "adamw_torch", "report_to": ["none"],
                          "include_num_input_tokens_seen": "all", "torch_empty_cache_steps": None}))
    assert cfg.training["train_sampling_strategy"] == "sequential"


@pytest.mark.parametrize("training,message", [
    ({"per_device_batch_size": 2}, "'per_device_batch_size' (did you mean 'per_device_eval_batch_size' or 'per_device_train_batch_size'"),
    ({"lr_sheduler_type": "cosine"}, "did you mean 'lr_scheduler_type'"),
    ({"evaluation_strategy": "steps"}, "transformers 5: write eval_strategy"),
    ({"group_by_length": True}, "write train_sampling_strategy: group_by_length"),
    ({"lerning_rate": 1e-3}, "'learning_rate' is the runner's: learning rates come from the stage's 'trainable'"),
    ({"output_dir": "y"}, "may not set 'output_dir' (each stage writes to <run.output_dir>/<stage name>"),
    ({"learning_rate": 1e-3}, "may not set 'learning_rate'"),
    ({"remove_unused_columns": True}, "may not set 'remove_unused_columns'"),
    ({"resume_from_checkpoint": "c"}, "resumes by itself"),
    ({"lr_scheduler_kwargs": 3}, "training.lr_scheduler_kwargs must be a string or a mapping or null, got 3"),
    ({"lr_scheduler_type": "cosine_min"}, "lr_scheduler_type='cosine_min' is not valid (did you mean"),
    ({"train_sampling_strategy": "shuffled"}, "choose one of ['random', 'sequential'"),
    ({"run_name": ["a"]}, "training.run_name must be a string or null"),
    ({"warmup_ratio": 2}, "warmup_ratio must be in [0, 1)"),
    ({"gradient_checkpointing": True, "activation_checkpointing": True}, "they are one switch"),
    ({"eval_strategy": "steps"}, "eval_strategy='steps' needs an eval dataset; set data.eval"),
])
def test_bad_training_keys_say_what_to_write(training, message):
    with pytest.raises(ConfigError) as err:
        from_dict(_raw(training))
    assert message in str(err.value)


def test_a_stage_type_error_names_the_stage_and_the_key():
    with pytest.raises(ConfigError, match=r"stage 's': stages\[0\].training.max_steps must be an integer, got 'abc'"):
        from_dict(_raw(stage_training={"max_steps": "abc"}))
    with pytest.raises(ConfigError, match=r"stage 's': stages\[0\].training.per_device_eval_batch_size must be an integer"):
        from_dict(_raw(stage_training={"per_device_eval_batch_size": 1.5}))


def test_yaml_spellings_are_read_as_meant():
    # `eval_strategy: no` is false to YAML 1.1; `2e-5` a string; run_name: 2024 an int.
    cfg = from_dict(_raw({"eval_strategy": False, "weight_decay": "1e-2", "run_name": 2024, "max_steps": 4.0}))
    assert cfg.training == {"eval_strategy": "no", "weight_decay": 0.01, "run_name": "2024", "max_steps": 4}


def test_the_arguments_reach_transformers(tmp_path):
    cfg = from_dict(_raw({"seed": 7, "activation_checkpointing": True, "warmup_ratio": 0.1,
                          "lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr_rate": 0.1}},
                         stage_training={"max_steps": 3, "run_name": "r", "label_smoothing_factor": 0.05},
                         data={"eval": "e.json"}))
    stage = cfg.stages[0]
    assert cfg.stage_training(stage)["gradient_checkpointing"] is True  # one name, whichever was written
    args = training_arguments(cfg, stage, str(tmp_path), {"p": 2e-3}, has_eval=True)
    assert (args.seed, args.max_steps, args.run_name, args.label_smoothing_factor) == (7, 3, "r", 0.05)
    assert args.learning_rate == 2e-3 and args.output_dir == str(tmp_path) and args.remove_unused_columns is False
    assert args.eval_strategy == "steps" and args.per_device_eval_batch_size == args.per_device_train_batch_size
    assert args.lr_scheduler_kwargs == {"min_lr_rate": 0.1} and args.warmup_steps == 0.1
    on = [getattr(args, n) for n in ("activation_checkpointing", "gradient_checkpointing") if hasattr(args, n)]
    assert on and all(on)


def test_transformers_refusals_name_the_stage(tmp_path):
    cfg = from_dict(_raw({"load_best_model_at_end": True, "eval_strategy": "epoch", "save_strategy": "steps"},
                         data={"eval": "e.json"}))
    with pytest.raises(ConfigError, match="stage 's': transformers refuses the training arguments"):
        training_arguments(cfg, cfg.stages[0], str(tmp_path), {"p": 1e-3}, has_eval=True)


# ------------------------------------------------------------------ a real stage with eval, interrupted
class _Watch(TrainerCallback):
    """Stops (after saving) at ``stop``; records what the stage's Trainer ran with."""

    def __init__(self, stop=None):
        self.stop, self.seen = stop, {}

    def on_train_begin(self, args, state, control, **kw):
        self.seen.update(run_name=args.run_name, tb=os.environ.get("TENSORBOARD_LOGGING_DIR"),
                         eval_steps_strategy=args.eval_strategy == "steps", eval_steps=args.eval_steps)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.stop:
            control.should_save = control.should_training_stop = True

    def on_train_end(self, args, state, control, lr_scheduler=None, optimizer=None, **kw):
        self.seen.update(last_lr=lr_scheduler.get_last_lr(), base_lr=[g["initial_lr"] for g in optimizer.param_groups])


@pytest.fixture(scope="module")
def eval_run(tiny_data, tmp_path_factory):
    from tests.conftest import write_tiny_dataset

    root = tmp_path_factory.mktemp("eval_run")
    evalset = write_tiny_dataset(str(root / "eval"), n=6, seed=1)
    sets = [f"data.train={tiny_data}", f"data.image_folder={os.path.dirname(tiny_data)}",
            f"data.eval={evalset}", f"data.eval_image_folder={os.path.dirname(evalset)}", "data.eval_accuracy=2",
            "stages.0.training.max_steps=6", "training.per_device_train_batch_size=2", "training.logging_steps=1",
            "training.save_steps=2", "training.eval_steps=2", "training.run_name=tiny-eval", "training.logging_dir=tb",
            "training.lr_scheduler_type=cosine_with_min_lr", "training.lr_scheduler_kwargs={min_lr_rate: 0.1}",
            "training.warmup_ratio=0"]
    interrupted, resumed = _Watch(stop=4), _Watch()
    cfg = load_config(CONFIG, [f"run.output_dir={root / 'run'}", *sets])
    run_training(cfg, stages=["pretrain"], callbacks=[interrupted])
    before = json.loads((root / "run" / "pretrain" / "eval_history.json").read_text())
    shutil.rmtree(root / "run" / "pretrain" / "final")  # "killed" after step 4's checkpoint
    (res,) = run_training(load_config(CONFIG, [f"run.output_dir={root / 'run'}", *sets]), stages=["pretrain"],
                          callbacks=[resumed])
    return {"dir": root / "run" / "pretrain", "result": res, "before": before, "seen": resumed.seen,
            "env_after": os.environ.get("TENSORBOARD_LOGGING_DIR")}


@pytest.mark.slow
def test_eval_loss_and_accuracy_are_logged_saved_and_plotted_across_a_resume(eval_run):
    stage = eval_run["dir"]
    evals = json.loads((stage / "eval_history.json").read_text())
    assert [e["step"] for e in evals] == [2, 4, 6]  # no point lost or repeated by the resume
    assert all(math.isfinite(e["eval_loss"]) and 0 <= e["eval_accuracy"] <= 1 for e in evals)
    assert all(e["eval_accuracy_records"] == 2 for e in evals)
    # the points from before the interruption come from the checkpoint, unchanged
    assert [e["eval_loss"] for e in evals[:2]] == [e["eval_loss"] for e in eval_run["before"][:2]]
    history = json.loads((stage / "log_history.json").read_text())
    assert [h["step"] for h in history if "eval_loss" in h] == [2, 4, 6]
    assert eval_run["result"].eval_loss == evals[-1]["eval_loss"] and eval_run["result"].steps == 6
    assert (stage / "loss.png").stat().st_size > 0 and (stage / "checkpoint-6").is_dir()
    saved = json.loads((stage / "final" / "training_stage.json").read_text())
    assert saved["eval"]["step"] == 6 and saved["training"]["eval_steps"] == 2
    assert eval_run["seen"]["eval_steps_strategy"] and eval_run["seen"]["eval_steps"] == 2  # eval data: steps by default


@pytest.mark.slow
def test_run_name_and_logging_dir_reach_the_trainer(eval_run):
    assert eval_run["seen"]["run_name"] == "tiny-eval"
    # transformers 5's TensorBoardCallback reads the folder from the environment, set for the stage only
    assert eval_run["seen"]["tb"] == str(eval_run["dir"] / "tb")
    assert eval_run["env_after"] is None


@pytest.mark.slow
def test_lr_scheduler_kwargs_reach_the_scheduler(eval_run):
    seen = eval_run["seen"]
    assert seen["last_lr"] == pytest.approx([0.1 * lr for lr in seen["base_lr"]])  # cosine down to min_lr_rate
    lrs = [h["learning_rate"] for h in json.loads((eval_run["dir"] / "log_history.json").read_text())
           if "learning_rate" in h]
    # the lr each step used: cosine from 1e-3 towards 0.1 × 1e-3 over 6 steps (no warmup)
    assert lrs == pytest.approx([1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 6))) for k in range(6)])


def test_tensorboard_writes_into_logging_dir(tiny_data, tmp_path):
    from transformers.integrations import is_tensorboard_available

    if not is_tensorboard_available():
        pytest.skip("neither tensorboard nor tensorboardX is installed")
    cfg = load_config(CONFIG, [f"run.output_dir={tmp_path}", f"data.train={tiny_data}",
                               f"data.image_folder={os.path.dirname(tiny_data)}", "stages.0.training.max_steps=1",
                               "training.per_device_train_batch_size=2", "training.logging_steps=1",
                               "training.report_to=tensorboard", "training.logging_dir=tb"])
    run_training(cfg, stages=["pretrain"])
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "pretrain" / "tb"))

