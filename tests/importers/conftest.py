"""Fixtures of the importer tests (the helpers are in ``importer_parts.py``)."""

from __future__ import annotations

import pytest
from importer_parts import plain_tokenizer


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    plain_tokenizer().save_pretrained(path)
    return str(path)
