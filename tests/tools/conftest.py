"""Helpers for tests that hand rendered files to the real programs that read them."""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import pytest

from nodekiln.bootstrap.render import write_site

APT = {
    "cloud-init": "cloud-init",
    "haproxy": "haproxy",
    "keepalived": "keepalived",
    "nft": "nftables",
    "unshare": "util-linux",
    "ip": "iproute2",
}


def require(tool: str) -> str:
    """The tool's path; a missing tool fails the test with the command that installs it."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if not found:
        pytest.fail(f"{tool} is not installed: apt-get install -y {APT.get(tool, tool)}", pytrace=False)
    return found


@pytest.fixture
def rendered(variant_site, tmp_path) -> tuple[object, Path]:
    """Each fixture site rendered to DIR/<node>/...; user-data decompressed when gzip'ed."""
    site, secrets = variant_site
    out = tmp_path / "rendered"
    write_site(site, secrets, out)
    for user_data in out.glob("*/user-data"):
        data = user_data.read_bytes()
        if data[:2] == b"\x1f\x8b":
            user_data.write_bytes(gzip.decompress(data))
    return site, out


def keepalived_test(folder: Path, interface: str) -> tuple[int, str]:
    """`keepalived -t` in a network namespace with the site's interface and `folder` mounted on
    /etc/keepalived (the check script must pass keepalived's script security): (exit, output).
    keepalived 2.2.7 exits 0 for a missing file, and SIGTERMs itself (143) after testing a
    config with a vrrp_script: so the file must exist and a good config prints nothing."""
    keepalived, unshare = require("keepalived"), require("unshare")
    require("ip")
    script = (
        f"ip link add {interface} type veth peer name nkpeer0 && mount --bind {folder} /etc/keepalived && "
        f"exec {keepalived} -t -l -D -f /etc/keepalived/keepalived.conf"
    )
    result = subprocess.run(
        [unshare, "-n", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).strip()
