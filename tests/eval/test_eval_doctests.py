"""The worked examples in the eval modules' docstrings are executed, so they stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "hires_vlm.eval.scorers.common",
    "hires_vlm.eval.scorers.vqa",
    "hires_vlm.eval.scorers.gqa",
    "hires_vlm.eval.scorers.choice",
    "hires_vlm.eval.scorers.pope",
    "hires_vlm.eval.scorers.mme",
    "hires_vlm.eval.scorers.mmbench",
    "hires_vlm.eval.scorers.chartqa",
    "hires_vlm.eval.scorers.mathvista",
    "hires_vlm.eval.benchmarks.prompts",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
