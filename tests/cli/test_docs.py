"""docs/configuration.md documents every key of every section, with the right default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from qwen_fluent.config import FLAG_KEYS, _section_types

DOC = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()


def _section_text(section: str) -> str:
    match = re.search(rf"^## `\[{section}\]`.*?(?=^## |\Z)", DOC, re.S | re.M)
    assert match, f"docs/configuration.md has no ## `[{section}]` heading"
    return match.group(0)


@pytest.mark.parametrize("section", sorted(_section_types()))
def test_every_key_is_documented(section):
    text = _section_text(section)
    for field in dataclasses.fields(_section_types()[section]):
        assert re.search(rf"^\| `{field.name}` \|", text, re.M), f"[{section}] {field.name} is not documented"


def test_every_flag_is_in_the_table():
    for flag in FLAG_KEYS:
        assert f"`--{flag.replace('_', '-')}`" in DOC and f"`QWEN_FLUENT_{flag.upper()}`" in DOC
