"""``training.feature_cache``: the keys, a frozen-tower stage trained through the cache, and a stage that
trains the tower refused it."""

import json
import os

import pytest

import hires_vlm
from hires_vlm.train.config import ConfigError, from_dict, load_config
from hires_vlm.train.runner import run_training

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = os.path.join(os.path.dirname(hires_vlm.__file__), "configs", "llava_hd", "tiny.yaml")


def _raw(training):
    return {"run": {"output_dir": "x"}, "model": {"method": "llava"}, "training": training,
            "stages": [{"name": "s", "trainable": {"connector": 1e-3}}]}


def test_the_key_is_read_with_its_default_bound():
    cfg = from_dict(_raw({"feature_cache": {"dir": "cache"}}))
    assert cfg.training["feature_cache"] == {"dir": "cache", "max_gb": 10}


@pytest.mark.parametrize("value,message", [
    ({"dir": "c", "size": 3}, "unknown key(s) ['size'] in training.feature_cache; valid keys: ['dir', 'max_gb']"),
    ({"max_gb": 3}, "training.feature_cache.dir must be a folder"),
    ({"dir": "c", "max_gb": 0}, "training.feature_cache.max_gb must be a positive number of gigabytes, got 0"),
    ("cache", "training.feature_cache must be a mapping or null"),
])
def test_bad_feature_cache_keys_say_what_is_wrong(value, message):
    with pytest.raises(ConfigError) as err:
        from_dict(_raw({"feature_cache": value}))
    assert message in str(err.value)


def _losses(stage_dir):
    with open(stage_dir / "log_history.json") as f:
        return [h["loss"] for h in json.load(f) if "loss" in h]


@pytest.mark.slow
def test_a_frozen_tower_stage_trains_through_the_cache_with_the_same_losses(tmp_path, tiny_data):
    common = [f"data.train={tiny_data}", f"data.image_folder={os.path.dirname(tiny_data)}",
              "stages.0.training.max_steps=4", "training.logging_steps=1", "training.per_device_train_batch_size=4"]
    cache = tmp_path / "features"
    plain = load_config(CONFIG, [f"run.output_dir={tmp_path / 'plain'}", *common])
    run_training(plain, stages=["pretrain"])
    runs = {}
    for name in ("filling", "reading"):  # the second run finds every view of the first in the cache
        cfg = load_config(CONFIG, [f"run.output_dir={tmp_path / name}", *common,
                                   f"training.feature_cache={{dir: {cache}, max_gb: 1}}"])
        run_training(cfg, stages=["pretrain"])
        runs[name] = sorted(p.name for p in cache.rglob("*.safetensors"))
    assert runs["filling"], "the stage wrote no features"
    assert runs["reading"] == runs["filling"]  # read back, nothing computed or written again
    expected = _losses(tmp_path / "plain" / "pretrain")
    for name in runs:
        assert _losses(tmp_path / name / "pretrain") == pytest.approx(expected, rel=1e-5), name


def test_a_stage_that_trains_the_tower_is_refused_the_cache(tmp_path, tiny_data):
    cfg = load_config(CONFIG, [f"run.output_dir={tmp_path}", f"data.train={tiny_data}",
                               f"data.image_folder={os.path.dirname(tiny_data)}",
                               "stages.0.trainable.vision_tower=1e-4", "training.feature_cache={dir: cache}"])
    with pytest.raises(ConfigError, match="stage 'pretrain': training.feature_cache: the vision tower is trainable"):
        run_training(cfg, stages=["pretrain"])
    assert not (tmp_path / "cache").exists() and not (tmp_path / "pretrain" / "final").exists()
