"""The user-data each server boots with: the node's rendered cloud-init data (nodekiln.bootstrap.render)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodekiln.config.site import Site
    from nodekiln.secrets import Secrets

Renderer = Callable[["Site", "Secrets"], dict[str, bytes]]
NOVA_USER_DATA_LIMIT = 65_535  # bytes before base64


def render_user_data(site: Site, secrets: Secrets, renderer: Renderer | None = None) -> dict[str, bytes]:
    """{node name: user-data bytes}; `renderer` replaces nodekiln.bootstrap.render in tests that need no real data."""
    if renderer is not None:
        return renderer(site, secrets)
    from nodekiln.bootstrap.render import render_site

    return {name: rendered.user_data for name, rendered in render_site(site, secrets).items()}


def digest(user_data: bytes) -> str:
    """What the server's metadata records of its user-data (Nova does not give user-data back to users).

    site-deploy takes it of the user-data rendered with the stored secrets, also for a server that
    boots with a fresh join token (nodekiln.bootstrap.jointoken): the token must not read as drift later.
    """
    return hashlib.sha256(user_data).hexdigest()[:16]
