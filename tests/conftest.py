"""Shared fixtures: a small LLaVA-format dataset drawn on the fly, tiny models."""

from __future__ import annotations

import json
import os
import random

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

COLOURS = ["red", "green", "blue"]


def write_tiny_dataset(root, n: int = 48, seed: int = 0) -> str:
    """Circles of a colour on white, various sizes; question: its colour. Returns the JSON path."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    recs = []
    for i in range(n):
        w, h = rng.choice([(224, 224), (300, 200), (200, 300), (336, 168), (150, 150)])
        col = rng.choice(COLOURS)
        im = Image.new("RGB", (w, h), "white")
        ImageDraw.Draw(im).ellipse([w // 4, h // 4, 3 * w // 4, 3 * h // 4], fill=col)
        im.save(os.path.join(root, "img", f"{i}.png"))
        recs.append({"id": str(i), "image": f"img/{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": col}]})
    path = os.path.join(root, "train.json")
    with open(path, "w") as f:
        json.dump(recs, f)
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_data")
    return write_tiny_dataset(str(root))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a shared, loaded machine
    (idle OpenMP workers spin). Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)



SMALL_TINY = {"vision_hidden": 32, "vision_layers": 1, "text_hidden": 64, "text_layers": 1, "vocab_size": 300}


@pytest.fixture(scope="session")
def save_small_tiny(tmp_path_factory):
    """``save(name, method, seed)``: a small tiny model and its processor saved once into a fresh
    folder; returns ``(path, model in eval mode, processor)``."""
    from hires_vlm.tiny import build_tiny

    def save(name: str, method: str = "llava_hd", seed: int = 0):
        model, proc = build_tiny(method, seed=seed, **SMALL_TINY)
        path = tmp_path_factory.mktemp(name) / "model"
        model.save_pretrained(path)
        proc.save_pretrained(path)
        return path, model.eval(), proc

    return save


@pytest.fixture
def assert_same_final_weights():
    """``check(dir_a, dir_b, atol)``: the ``final/model.safetensors`` under two run directories hold the
    same tensors (to ``atol``) — e.g. an interrupted and resumed stage against an uninterrupted one."""
    import torch
    from safetensors.torch import load_file

    def check(dir_a, dir_b, atol: float = 1e-6) -> None:
        wa = load_file(os.path.join(str(dir_a), "final", "model.safetensors"))
        wb = load_file(os.path.join(str(dir_b), "final", "model.safetensors"))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert torch.allclose(wa[k], wb[k], atol=atol), k

    return check
