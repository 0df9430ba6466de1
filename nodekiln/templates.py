"""Jinja2 rendering of the asset folders (bootstrap/, addons/, images/)."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2

from nodekiln import assets


@cache
def environment(folder: str) -> jinja2.Environment:
    """One strict environment per asset folder: a missing variable is an error, never ''."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(assets.folder(folder)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render(folder: str, name: str, **context: Any) -> str:
    return environment(folder).get_template(name).render(**context)
