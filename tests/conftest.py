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
