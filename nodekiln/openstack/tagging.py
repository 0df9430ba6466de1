"""The site's tag on what nodekiln creates in Neutron: how site-deploy finds it again, and site-destroy deletes it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

if TYPE_CHECKING:
    from openstack.network.v2.port import Port
    from openstack.resource import Resource

    from nodekiln.openstack.cloud import Cloud

R = TypeVar("R", bound="Resource")


class _Tags(Protocol):
    tags: list[str]


def tagged(cloud: Cloud, create: Callable[..., R], tag: str, **attrs: Any) -> R:
    """Create a Neutron resource carrying the site's tag: in the POST where Neutron takes it, else POST then PUT tags."""
    from openstack import exceptions

    if cloud.tags_in_post:
        try:
            return create(tags=[tag], **attrs)
        except exceptions.BadRequestException as exc:
            if "tags" not in str(exc):
                raise
            cloud.tags_in_post = False
    created = create(**attrs)
    cloud.conn.network.set_tags(created, [tag])
    # Every resource created here has the SDK's TagMixin; Resource, R's bound, does not say so.
    cast(_Tags, created).tags = [tag]
    return created


def tag_all(cloud: Cloud, ports: Sequence[Port], tag: str, parallelism: int) -> None:
    """PUT the tag on ports created in bulk (Neutron's bulk POST takes no tags)."""
    with ThreadPoolExecutor(max_workers=parallelism, thread_name_prefix="nodekiln-tag") as pool:
        untagged = [p for p in ports if tag not in (p.tags or [])]
        for future in [pool.submit(cloud.conn.network.set_tags, p, [tag]) for p in untagged]:
            future.result()
