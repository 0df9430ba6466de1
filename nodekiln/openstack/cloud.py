"""Connecting to the site's cloud (clouds.yaml / OS_CLOUD), counting calls, one-line errors."""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from nodekiln.errors import NodekilnError

if TYPE_CHECKING:
    import requests
    from openstack.connection import Connection

    from nodekiln.config.openstack import OpenStackSpec

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class OpenStackError(NodekilnError):
    """The cloud refused something or lacks it; the message names the resource."""


class CallCounter:
    """HTTP calls a connection made, by method; token requests are counted apart as `auth`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.by_method: Counter[str] = Counter()
        self.log: list[tuple[str, str]] = []

    def add(self, method: str, url: str) -> None:
        with self._lock:
            self.by_method[method] += 1
            self.log.append((method, url))

    @property
    def writes(self) -> int:
        return sum(n for m, n in self.by_method.items() if m in WRITE_METHODS)

    @property
    def total(self) -> int:
        return sum(n for m, n in self.by_method.items() if m != "auth")

    def mark(self) -> int:
        return len(self.log)

    def since(self, mark: int) -> CallCounter:
        """The calls made after `mark()` returned `mark`, as a counter of their own."""
        part = CallCounter()
        with self._lock:
            for method, url in self.log[mark:]:
                part.add(method, url)
        return part

    def write_calls(self) -> list[tuple[str, str]]:
        return [(m, u) for m, u in self.log if m in WRITE_METHODS]

    def __repr__(self) -> str:
        return f"CallCounter({dict(self.by_method)})"


@dataclass
class Cloud:
    """A connection and what nodekiln learned of it while using it.

    Kept beside the SDK's connection, not on it: one per connection (a weak map, so it goes
    with the connection), which is what lets a second run on the same connection skip what
    the first one learned, and lets a test count the calls of runs it did not start.
    """

    conn: Connection
    calls: CallCounter
    # Whether Neutron takes `tags` in a create POST; some do not (they answer 400), and a
    # connection that saw that once goes straight to POST-then-PUT-tags.
    tags_in_post: bool = True


_CLOUDS: weakref.WeakKeyDictionary[Connection, Cloud] = weakref.WeakKeyDictionary()
_CLOUDS_LOCK = threading.Lock()


def cloud_of(conn: Connection) -> Cloud:
    """The Cloud of `conn`; the first call starts counting every request it makes."""
    with _CLOUDS_LOCK:
        known = _CLOUDS.get(conn)
        if known is None:
            known = _CLOUDS[conn] = Cloud(conn, _count(conn))
        return known


def count_calls(conn: Connection) -> CallCounter:
    """Count every request `conn` makes from now on (the same counter for every caller)."""
    return cloud_of(conn).calls


def _count(conn: Connection) -> CallCounter:
    counter = CallCounter()
    session = conn.session
    original = session.request

    def request(url: str, method: str, *args: Any, **kwargs: Any) -> requests.Response:
        # Token requests (authenticated=False) are how the client logs in, not site changes.
        counter.add("auth" if kwargs.get("authenticated") is False else method.upper(), url)
        return original(url, method, *args, **kwargs)

    # Wrapping the keystoneauth session is the one way to see every request the SDK makes.
    session.request = request  # type: ignore[method-assign]
    return counter


def connect(spec: OpenStackSpec) -> Connection:
    """A connection to the site's cloud: `openstack.cloud` in clouds.yaml, else $OS_CLOUD / OS_* variables."""
    import openstack
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    name = spec.cloud or "(OS_CLOUD / OS_* variables)"
    try:
        conn = openstack.connect(cloud=spec.cloud, region_name=spec.region)
        conn.authorize()
    except (sdk.SDKException, ksa.ClientException) as exc:
        raise OpenStackError(f"cannot use cloud {name}: {one_line(exc)}") from None
    return conn


def one_line(exc: BaseException) -> str:
    """The useful part of an openstacksdk / keystoneauth error, on one line."""
    details = getattr(exc, "details", None)
    text = details if isinstance(details, str) and details else str(exc)
    text = " ".join(text.split())
    for noise in (
        "BadRequestException: ",
        "ConflictException: ",
        "NotFoundException: ",
        "ForbiddenException: ",
        "HttpException: ",
    ):
        text = text.replace(noise, "")
    return text[:400]


@contextlib.contextmanager
def about(what: str) -> Iterator[None]:
    """Turn a cloud error inside the block into OpenStackError('<what>: <reason>')."""
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    try:
        yield
    except (sdk.SDKException, ksa.ClientException) as exc:
        raise OpenStackError(f"{what}: {one_line(exc)}") from None
