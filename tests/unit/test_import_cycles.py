"""The import-cycle check of ``make lint`` (tests/import_cycles.py): it finds a cycle,
lazy imports included and type-only imports excepted, and the project has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.import_cycles import find_cycles


def write_package(root: Path, name: str, modules: dict[str, str]) -> None:
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, text in modules.items():
        (package / f"{module}.py").write_text(text)


def test_finds_a_cycle_through_a_lazy_import_but_not_a_type_only_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_package(tmp_path, "cyc_pkg", {
        "a": "from cyc_pkg import b\n",
        "b": "def f():\n    from cyc_pkg import c\n",
        "c": "import cyc_pkg.a\n",
        "d": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyc_pkg import e\n",
        "e": "from cyc_pkg import d\n",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert find_cycles(("cyc_pkg",)) == [["cyc_pkg.a", "cyc_pkg.b", "cyc_pkg.c"]]
    finally:
        for name in [m for m in sys.modules if m.startswith("cyc_pkg")]:
            del sys.modules[name]


def test_the_project_has_no_import_cycle() -> None:
    assert find_cycles() == []


def test_the_import_contracts_hold() -> None:
    """pyproject.toml's import-linter contracts (dependencies point one way), as make lint."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
