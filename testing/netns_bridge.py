"""Network namespaces on one bridge: what the netns test beds (testing/testbed.py, the control
planes' HA; testing/edgebed.py, the edge) share.

Every machine is a namespace joined by a veth pair (named as the site's interface inside) to a
bridge in a namespace of its own; nothing is added to the host's namespace. Namespaces are
named `<prefix><pid>x<n>-<machine>`, so those left by a crashed earlier run (whose process is
gone) are found and removed on start.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

from nodekiln.run import run


def ip(*args: object) -> str:
    return run(["ip", *[str(a) for a in args]], timeout=30).output


def reap_stale(prefix: str) -> None:
    """Remove the namespaces of earlier runs whose process no longer exists."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    for line in listing.splitlines():
        match = re.match(rf"({prefix}(\d+)x\d+-\S+)", line)
        if match and not Path(f"/proc/{match.group(2)}").exists():
            subprocess.run(["ip", "netns", "del", match.group(1)], check=False, capture_output=True)


def build(bridge: str, machines: list[tuple[str, str, str]], interface: str, prefixlen: int) -> list[str]:
    """The bridge namespace, then one namespace per (namespace, veth name, address) on it.
    Returns every namespace made, in order (delete them in reverse with `remove`), also the ones
    made before a failure: the caller's cleanup then finds them."""
    made: list[str] = []
    try:
        ip("netns", "add", bridge)
        made.append(bridge)
        ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        ip("-n", bridge, "link", "set", "br0", "up")
        for ns, veth, address in machines:
            ip("netns", "add", ns)
            made.append(ns)
            ip("link", "add", veth, "netns", bridge, "type", "veth", "peer", "name", interface, "netns", ns)
            ip("-n", ns, "addr", "add", f"{address}/{prefixlen}", "dev", interface)
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", interface, "up")
            ip("-n", bridge, "link", "set", veth, "master", "br0", "up")
    except BaseException:
        remove(made)
        raise
    return made


def remove(namespaces: list[str]) -> None:
    for name in reversed(namespaces):
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop a program the bed started in its own process group: `sig`, then SIGKILL after 10 s."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=5)
