"""Jinja2 rendering of the asset folders (bootstrap/, cloudinit/, addons/, images/)."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import jinja2

ROOT = Path(__file__).resolve().parent.parent


@cache
def environment(folder: str) -> jinja2.Environment:
    """One strict environment per asset folder: a missing variable is an error, never ''."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(ROOT / folder),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(folder: str, name: str, **context: Any) -> str:
    return environment(folder).get_template(name).render(**context)
