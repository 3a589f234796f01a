"""Every shipped config validates; overrides; clear errors."""

import glob
import os

import pytest

import hires_vlm
from hires_vlm.train.config import ConfigError, apply_override, from_dict, load_config, validate

CONFIG_DIR = os.path.join(os.path.dirname(hires_vlm.__file__), "configs")
YAMLS = sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "*.yaml"), recursive=True))


def test_configs_are_found_recursively():
    assert len(YAMLS) >= 3 and any(os.sep + "llava_hd" + os.sep in p for p in YAMLS)


@pytest.mark.parametrize("path", YAMLS, ids=[os.path.relpath(p, CONFIG_DIR) for p in YAMLS])
def test_every_shipped_config_validates(path):
    import yaml

    with open(path) as f:
        raw = yaml.safe_load(f)
    if "stages" not in raw:  # a method-only YAML (for `inspect --config`)
        from hires_vlm.methods import resolve_method_config

        resolve_method_config(raw.get("method", raw))
        return
    cfg = load_config(path)
    validate(cfg)
    for stage in cfg.stages:
        ds = cfg.stage_training(stage).get("deepspeed")
        if ds:
            from hires_vlm.train.runner import resolve_config_path

            assert os.path.isfile(resolve_config_path(ds, path))


def test_deepspeed_configs_are_valid_json():
    import json

    files = glob.glob(os.path.join(CONFIG_DIR, "deepspeed", "*.json"))
    assert {os.path.basename(f) for f in files} >= {"zero2.json", "zero3.json", "zero3_offload.json"}
    for f in files:
        with open(f) as fh:
            assert json.load(fh)["zero_optimization"]["stage"] in (2, 3)


def test_overrides_reach_nested_keys_and_list_items():
    raw = {"run": {"output_dir": "x"}, "model": {"method": {"preset": "llava"}},
           "stages": [{"name": "a", "trainable": {"connector": 1e-3}}]}
    apply_override(raw, "stages.0.training.max_steps=7")
    apply_override(raw, "model.method.preset=llava_hd")
    apply_override(raw, "stages.0.trainable.language_model=2e-5")
    apply_override(raw, "data.train=/tmp/x.json")
    cfg = from_dict(raw)
    assert cfg.stages[0].training["max_steps"] == 7
    assert cfg.model.method == {"preset": "llava_hd"}
    assert cfg.stages[0].trainable == {"connector": 1e-3, "language_model": 2e-5}
    with pytest.raises(ConfigError, match="index"):
        apply_override(raw, "stages.5.name=b")
    with pytest.raises(ConfigError, match="key=value"):
        apply_override(raw, "stages")


@pytest.mark.parametrize("raw,msg", [
    ({"run": {"output_dir": "x"}, "stages": [{"name": "a", "trainable": {"c": 1}}], "extra": 1}, "unknown key"),
    ({"run": {}, "stages": [{"name": "a", "trainable": {"c": 1}}]}, "output_dir"),
    ({"run": {"output_dir": "x"}, "stages": []}, "at least one"),
    ({"run": {"output_dir": "x"}, "stages": [{"name": "a", "trainable": {"c": -1}}]}, "positive"),
    ({"run": {"output_dir": "x"}, "stages": [{"name": "a", "trainable": {"c": 1}, "training": {"lr": 1}}]},
     "unknown key"),
    ({"run": {"output_dir": "x"}, "stages": [{"name": "a", "trainable": {"c": 1}}, {"name": "a", "trainable": {"c": 1}}]},
     "twice"),
    ({"run": {"output_dir": "x"}, "model": {"image_resampler": "lanczos"}, "stages": [{"name": "a", "trainable": {"c": 1}}]},
     "image_resampler='lanczos' is not valid"),
])
def test_bad_configs_say_what_is_wrong(raw, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict(raw)


def test_bad_method_in_config_is_reported():
    cfg = from_dict({"run": {"output_dir": "x"}, "model": {"method": {"preset": "nope"}},
                     "stages": [{"name": "a", "trainable": {"c": 1}}]})
    with pytest.raises(ValueError, match="not supported"):
        validate(cfg)
