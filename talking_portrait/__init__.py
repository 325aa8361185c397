"""Where talking-portrait's Hydra configs are, in a checkout and in an installed package.

The repository keeps them at its top (``conf/`` and ``experiments/``); the wheel carries the same two
folders inside this package (``talking_portrait/conf``, ``talking_portrait/experiments``, mapped in
``setup.cfg``), so every Hydra CLI works from any folder after ``pip install .``. Nothing else lives here:
data, caches and logs belong to the folder a command runs in (``conf/common/paths``).
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent


def _resource(name: str) -> Path:
    """``name`` inside the installed package, else beside this package in the checkout."""
    for folder in (_HERE / name, _HERE.parent / name):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(
        f"talking-portrait's {name}/ folder is neither in {_HERE} nor in {_HERE.parent}: "
        "reinstall the package (pip install .)"
    )


CONF_DIR = _resource("conf")
EXPERIMENTS_DIR = _resource("experiments")
# The checkout holding conf/ at its top, or None for an installed package.
CHECKOUT = None if CONF_DIR.parent == _HERE else _HERE.parent
