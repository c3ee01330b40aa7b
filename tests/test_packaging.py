"""pyproject.toml: the package builds offline into a wheel holding the package only, with the console
entry points; every command answers --version; the project's code has a license."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

import captioner

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_console_entry_points_name_callables():
    scripts = PROJECT["project"]["scripts"]
    assert {"captioner-caption", "captioner-train", "captioner-evaluate"} <= set(scripts)
    for target in scripts.values():
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))


def test_the_wheel_holds_the_package_and_entry_points_and_nothing_large(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "captioner", source / "captioner", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                             "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (wheel,) = (tmp_path / "dist").glob("captioner-*.whl")
    assert wheel.name.startswith(f"captioner-{captioner.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(archive.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert "captioner/__init__.py" in names and "captioner/data/__init__.py" in names
    assert not [n for n in names if n.startswith(("tests/", "bench/", "weights/", "notebooks/"))]
    assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)
    assert "captioner-caption = captioner.cli:caption_command" in entry_points
    assert wheel.stat().st_size < 1024 * 1024


def test_the_project_code_has_a_license():
    assert "Permission is hereby granted" in (ROOT / "LICENSE").read_text()
    assert PROJECT["project"]["license"] == "MIT"


@pytest.mark.parametrize("main", ["captioner.cli:caption_main", "captioner.cli:train_main",
                                  "captioner.evaluate:main", "captioner.notebook.__main__:main"])
def test_every_command_answers_version(main, capsys):
    module, func = main.split(":")
    with pytest.raises(SystemExit) as info:
        getattr(importlib.import_module(module), func)(["--version"])
    assert info.value.code == 0
    assert f"captioner {captioner.__version__}" in capsys.readouterr().out


def test_import_captioner_works_from_another_folder_once_on_the_path(tmp_path):
    # What `pip install -e .` gives: the package importable with the working directory elsewhere.
    result = subprocess.run([sys.executable, "-c", "import captioner, sys; print(captioner.__version__)"],
                            cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)})
    assert result.stdout.strip() == captioner.__version__, result.stderr


def test_the_ruff_configuration_allows_120_columns():
    assert PROJECT["tool"]["ruff"]["line-length"] == 120
