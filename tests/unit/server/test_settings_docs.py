"""The README's settings table lists every Settings field, with its flag and its description."""

from __future__ import annotations

from pathlib import Path

from rnnserve.server.settings import Settings

README = Path(__file__).resolve().parents[3] / "README.md"


def _configure_section() -> str:
    text = README.read_text(encoding="utf-8")
    return text[text.index("## Configure it") : text.index("\n## ", text.index("## Configure it"))]


def test_every_setting_has_its_row() -> None:
    section = _configure_section()
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if "| `RNN" in line}
    for name, field in Settings.model_fields.items():
        row = rows.get(f"`RNNSERVE_{name.upper()}`")
        assert row is not None, f"README 'Configure it' lacks RNNSERVE_{name.upper()}"
        assert f"`--{name.replace('_', '-')}`" in row
        assert field.description is not None and field.description in row
    assert len(rows) == len(Settings.model_fields), "the table lists a setting that is gone"
