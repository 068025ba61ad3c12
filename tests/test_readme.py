"""The README's generated tables are what the code says: they cannot rot unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

from consumers.metrics import metrics_table_markdown
from consumers.settings import config_table_markdown

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _section(name: str) -> str:
    match = re.search(rf"<!-- {name}:[^>]*-->\n(.*?)\n<!-- /{name} -->", README, re.S)
    assert match, f"README.md has no {name} section"
    return match.group(1).strip()


def test_configuration_table_is_the_generated_one() -> None:
    assert _section("config-table") == config_table_markdown().strip()


def test_metrics_table_is_the_generated_one() -> None:
    assert _section("metrics-table") == metrics_table_markdown().strip()
