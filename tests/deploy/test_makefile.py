"""The Makefile's two commands, as `make -n` (a dry run: it prints the recipes and runs nothing) shows them."""

import shutil
from pathlib import Path

import pytest

from support import make

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # runs make


def dry_run(target: str, tmp_path: Path) -> list[str]:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    return make.dry_run(["-B", target], tmp_path)


def test_make_demo_installs_abray_alone_with_progress_and_then_runs_the_demo(tmp_path):
    lines = dry_run("demo", tmp_path)
    installs = [line for line in lines if "pip install" in line]
    assert installs == [".venv/bin/python -m pip install --progress-bar on -e ."]  # no test extras, not --quiet
    assert lines.index(installs[0]) < lines.index(".venv/bin/python -m abray.cli demo ")
    assert any("source .venv/bin/activate" in line for line in lines)  # and says how to reach `abray`


def test_make_test_installs_the_test_extras_too(tmp_path):
    lines = dry_run("test", tmp_path)
    assert ".venv/bin/python -m pip install --progress-bar on -e '.[test]'" in lines
    assert lines[-2:] == ["scripts/test-deps.sh", ".venv/bin/python -m pytest"]
