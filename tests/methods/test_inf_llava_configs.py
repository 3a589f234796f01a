"""Every INF-LLaVA training config (recursively) loads, validates, builds its method and runs it;
the ablation files express the rows of the paper's Tables 4–6; stages train the documented prefixes."""

from pathlib import Path

import pytest
import torch

import hires_vlm
from hires_vlm.imaging import CLIP_MEAN, CLIP_STD
from hires_vlm.methods import Dims, build_method, resolve_method_config
from hires_vlm.train.config import load_config, validate

CONFIG_DIR = Path(hires_vlm.__file__).parent / "configs" / "inf_llava"
FILES = sorted(CONFIG_DIR.rglob("*.yaml"))


def test_the_config_folder_holds_the_recipes_and_the_ablations():
    names = {p.name for p in FILES}
    assert {"inf_llava.yaml", "inf_llava_paper.yaml"} <= names
    assert len([n for n in names if n.startswith("ablation_")]) == 10


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_config_is_valid_and_its_method_runs(path):
    cfg = load_config(path)
    validate(cfg)
    assert [s.name for s in cfg.stages] == ["pretrain", "finetune"]
    assert cfg.stages[0].trainable == {"connector": 1e-3} and cfg.stages[0].template == "plain"
    assert cfg.stages[1].trainable == {"connector": 2e-5, "language_model": 2e-5}
    assert cfg.data.train == "synthetic"
    method = resolve_method_config(cfg.model.method)
    m = build_method(method, Dims(vision_dim=16, text_dim=8, tile_size=28, grid=4))
    rec = method.imaging_spec(28, CLIP_MEAN, CLIP_STD).record_for((90, 60))
    out = m(torch.randn(rec.num_views, 16, 16), [rec]).tokens
    assert out[0].shape == (16, 8)


ABLATIONS = {
    # file: fields that differ from the paper preset (the row of the paper's table it reproduces)
    "ablation_t4_dem_global_only.yaml": {"directions": "global_query"},
    "ablation_t4_dem_local_only.yaml": {"directions": "local_query"},
    "ablation_t5_fusion_conv3x3.yaml": {"fusion": "conv3x3"},
    "ablation_t5_fusion_multiply.yaml": {"fusion": "multiply"},
    "ablation_t5_fusion_weighted_add.yaml": {"fusion": "weighted_add"},
    "ablation_t5_fusion_maxpool.yaml": {"fusion": "max"},
    "ablation_t5_fusion_add.yaml": {"fusion": "add"},
    "ablation_t6_dcm_local.yaml": {"cropping": "local"},
    "ablation_t6_dcm_global.yaml": {"cropping": "global"},
    "ablation_t6_dcm_add.yaml": {"enhancement": "none", "fusion": "add"},
    "inf_llava_paper.yaml": {},
}


@pytest.mark.parametrize("name,diff", ABLATIONS.items())
def test_ablation_files_change_only_their_row(name, diff):
    method = resolve_method_config(load_config(CONFIG_DIR / name).model.method)
    paper = resolve_method_config("inf_llava-paper").to_dict()
    got = method.to_dict()
    assert {k: v for k, v in got.items() if paper[k] != v} == diff


def test_official_recipe_uses_the_official_preset_and_its_stage_canvases():
    cfg = load_config(CONFIG_DIR / "inf_llava.yaml")
    assert resolve_method_config(cfg.model.method) == resolve_method_config("inf_llava")
    assert [s.method_runtime for s in cfg.stages] == [{"canvas": "center_crop"}, {"canvas": "pad_square"}]
    for path in FILES:  # the paper's recipes never switch the canvas
        if path.name != "inf_llava.yaml":
            assert all(not s.method_runtime for s in load_config(path).stages), path.name
