"""The code's shape: imports run one way, and the package lists every sub-package.

Entry modules (``python -m ...``: they end in ``if __name__ == "__main__":``) sit on top; stage libraries
(``audio2lmk/``, ``lmk2video/``) below them; ``common/`` at the bottom, knowing no stage. No library module
imports an entry module, and ``audio2lmk`` does not import ``lmk2video`` (the audio-driven ``generate`` uses
audio2lmk's library, not the other way round).
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGES = ("common", "audio2lmk", "lmk2video", "talking_portrait")


def module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in PACKAGES for p in sorted((PROJECT_ROOT / package).rglob("*.py"))}
ENTRY = {name for name, path in MODULES.items() if 'if __name__ == "__main__":' in path.read_text()}


def imported(path: Path) -> set[str]:
    """Every project module ``path`` imports, at any depth (lazy imports inside functions included)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n in MODULES}


def test_the_entry_modules_are_found() -> None:
    assert {"lmk2video.generate", "audio2lmk.infer", "common.lmk", "lmk2video.demo"} <= ENTRY
    assert "lmk2video.rendering" not in ENTRY and "lmk2video.generation" not in ENTRY


@pytest.mark.parametrize("name", sorted(set(MODULES) - ENTRY))
def test_library_modules_import_no_entry_module(name: str) -> None:
    assert not imported(MODULES[name]) & ENTRY


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.split(".")[0] in ("common", "audio2lmk")))
def test_lower_layers_do_not_import_higher_ones(name: str) -> None:
    above = {"common": ("audio2lmk", "lmk2video"), "audio2lmk": ("lmk2video",)}[name.split(".")[0]]
    assert not {n for n in imported(MODULES[name]) if n.split(".")[0] in above}


def test_setup_cfg_lists_every_package() -> None:
    """``packages`` is an explicit list (conf/ and experiments/ are mapped into talking_portrait): a new
    sub-package must be added there or the installed package would lack it."""
    parser = configparser.ConfigParser()
    parser.read(PROJECT_ROOT / "setup.cfg")
    listed = set(parser["options"]["packages"].split())
    found = {module_name(p) for package in PACKAGES for p in (PROJECT_ROOT / package).rglob("__init__.py")}
    assert found <= listed
    assert {"talking_portrait.conf", "talking_portrait.experiments"} <= listed
