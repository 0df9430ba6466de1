"""Where nodekiln's asset folders are: the templates, bake steps, elements and ISO scripts.

In a source checkout they are the top-level folders beside the package (`bootstrap/`,
`images/`, `addons/`), each next to the code of its stage. An installed wheel carries them
inside the package as `nodekiln/_assets/<folder>` (pyproject.toml's package-dir maps them), so
`pip install nodekiln` renders and builds without the repository.
"""

from __future__ import annotations

from pathlib import Path

from nodekiln.errors import NodekilnError

FOLDERS = ("addons", "bootstrap", "images")
PACKAGE = Path(__file__).resolve().parent
INSTALLED = PACKAGE / "_assets"
# The repository this package runs from, when it runs from one (tests, build/tools, caches).
CHECKOUT: Path | None = PACKAGE.parent if (PACKAGE.parent / "pyproject.toml").is_file() else None


def folder(name: str) -> Path:
    """The asset folder `name` (one of FOLDERS), from the wheel or from the checkout."""
    if name not in FOLDERS:
        raise ValueError(f"unknown asset folder {name!r}: expected one of {', '.join(FOLDERS)}")
    for base in (INSTALLED, PACKAGE.parent):
        if (base / name).is_dir():
            return base / name
    raise NodekilnError(
        f"nodekiln's {name}/ assets are missing (looked in {INSTALLED} and {PACKAGE.parent}): "
        "reinstall nodekiln (`pip install nodekiln`) or run from a full checkout"
    )
