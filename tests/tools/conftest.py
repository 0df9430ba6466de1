"""Helpers for tests that hand rendered files to the real programs that read them."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --- the addons rendered with the real upstream charts (tests/charts/upstream) -----------------


@dataclass
class RenderedSite:
    """The example site's addons plan, each release rendered offline with its real chart."""

    site: Any
    plan: Any
    helm: Any
    releases: dict[str, Any]  # release name -> nodekiln.addons.render.Rendered

    def objects(self) -> list[dict[str, Any]]:
        return [item for rendered in self.releases.values() for item in rendered.objects]

    def problems(self) -> list[str]:
        """What the cluster would reject (testing/manifests.py), over every release."""
        from testing import manifests

        crds = manifests.crd_schemas(self.objects())
        return [
            f"{name}: {problem}"
            for name, rendered in self.releases.items()
            for problem in manifests.problems(rendered.objects, self.site.kubernetes.version, crds)
        ]


def helm_binary() -> str:
    from nodekiln.addons.helm import TOOLS_BIN

    found = shutil.which("helm") or (str(TOOLS_BIN / "helm") if (TOOLS_BIN / "helm").is_file() else None)
    if not found:
        pytest.fail(
            "helm is not installed: run addons/tools/fetch-helm.sh (puts helm into build/tools/bin)", pytrace=False
        )
    return found


def render_site(folder: Path, change: dict[str, Any] | None = None) -> RenderedSite:
    """The example site (with `change` merged over its addons section) in `folder`, rendered."""
    from nodekiln.addons import plan_release_files
    from nodekiln.addons.helm import Helm
    from nodekiln.addons.render import render_plan
    from nodekiln.config.site import load_site
    from testing import charts

    previous = os.environ.get(charts.TOKEN_ENV)
    os.environ[charts.TOKEN_ENV] = "ghp_exampletoken"
    try:
        site = load_site(charts.example_site(folder / "site", change))
        plan, _ = plan_release_files(site, folder / "out")
        helm = Helm(helm_binary())
        rendered = render_plan(plan, helm, site.kubernetes.version)
    finally:
        if previous is None:
            os.environ.pop(charts.TOKEN_ENV, None)
        else:
            os.environ[charts.TOKEN_ENV] = previous
    return RenderedSite(site, plan, helm, {r.release.name: r for r in rendered})


@pytest.fixture(scope="session")
def example_render(tmp_path_factory: pytest.TempPathFactory) -> RenderedSite:
    """Every addon of the example site rendered with the real charts, once per test run."""
    return render_site(tmp_path_factory.mktemp("example-render"))
