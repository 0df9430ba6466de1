"""The HA files and firewall rulesets, checked by the programs that read them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from nodekiln.bootstrap.firewall import firewall_files
from nodekiln.bootstrap.ha import ha_files
from nodekiln.config.site import load_site
from nodekiln.secrets import SecretStore
from tests.tools.conftest import keepalived_test

pytestmark = pytest.mark.tools

PACKAGES = {
    "systemd-analyze": "systemd",
    "kubernetes-validate": "python3-pip (pip install kubernetes-validate)",
    "nft": "nftables",
    "ip": "iproute2",
    "unshare": "util-linux",
}


def need(tool: str) -> str:
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if not found:
        pytest.fail(f"{tool} is not installed: apt-get install -y {PACKAGES.get(tool, tool)}", pytrace=False)
    return found


def host_services(doc):
    doc["controlPlane"]["loadBalancerMode"] = "host-services"


def five(doc):
    doc["nodes"][3:3] = [
        {"name": "master04", "role": "control-plane", "address": "10.0.1.36"},
        {"name": "master05", "role": "control-plane", "address": "10.0.1.37"},
    ]
    doc["firewall"] = {
        "nodePorts": True,
        "extraTCPPorts": [80, 443],
        "sshFrom": ["10.0.0.0/8", "192.0.2.0/24"],
        "apiFrom": ["198.51.100.0/24", "203.0.113.9/32"],
    }


@pytest.fixture(params=["static-pods", "host-services", "five-control-planes"])
def rendered(request, site_file, tmp_path) -> tuple[object, Path]:
    change = {"static-pods": None, "host-services": host_services, "five-control-planes": five}[request.param]
    site = load_site(site_file(change))
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    out = tmp_path / "out"
    for node in site.nodes:
        for f in firewall_files(site, node) + ha_files(site, secrets, node):
            path = out / node.name / f.path.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f.content)
            path.chmod(f.mode)
    return site, out


def test_haproxy_accepts_the_config(rendered):
    site, out = rendered
    haproxy = need("haproxy")
    for cp in site.control_planes:
        cfg = out / cp.name / "etc/haproxy/haproxy.cfg"
        assert cfg.is_file()
        result = subprocess.run([haproxy, "-c", "-f", cfg], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "WARNING" not in result.stdout + result.stderr


def test_keepalived_accepts_the_config(rendered):
    """`keepalived -t` of every control plane's rendered folder (tests/tools/conftest.py)."""
    site, out = rendered
    for cp in site.control_planes:
        folder = out / cp.name / "etc/keepalived"
        assert (folder / "keepalived.conf").is_file() and (folder / "check_apiserver.sh").is_file()
        code, text = keepalived_test(folder, site.controlPlane.interface)
        assert code in (0, 143, -15) and text == "", f"exit {code}: {text}"


def test_keepalived_check_catches_a_broken_config(rendered, tmp_path):
    """The check above is not vacuous: an unknown keyword is reported."""
    site, out = rendered
    folder = tmp_path / "broken"
    shutil.copytree(out / site.init_node.name / "etc/keepalived", folder)
    conf = folder / "keepalived.conf"
    conf.write_text(conf.read_text().replace("advert_int", "advert_intervall"))
    _, text = keepalived_test(folder, site.controlPlane.interface)
    assert "Unknown keyword 'advert_intervall'" in text


def test_nft_accepts_every_role(rendered):
    site, out = rendered
    nft, unshare = need("nft"), need("unshare")
    for node in site.nodes:
        ruleset = out / node.name / "etc/nftables.conf"
        assert ruleset.is_file()
        # loaded for real, twice (a reload must work), in a namespace of its own
        result = subprocess.run(
            [
                unshare,
                "-n",
                "sh",
                "-c",
                f"{nft} -c -f {ruleset} && {nft} -f {ruleset} && {nft} -f {ruleset} && {nft} list table inet nodekiln",
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr
        assert "policy drop" in result.stdout


def test_static_pods_are_valid_kubernetes(rendered):
    site, out = rendered
    if site.controlPlane.loadBalancerMode != "static-pods":
        assert not list(out.glob("*/etc/kubernetes/manifests/*.yaml"))
        return
    validate = need("kubernetes-validate")
    manifests = sorted(out.glob("*/etc/kubernetes/manifests/*.yaml"))
    assert len(manifests) == 2 * len(site.control_planes)
    result = subprocess.run([validate, "--strict", *map(str, manifests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_systemd_units_verify(rendered, tmp_path):
    """The drop-ins with Debian's own units (from the installed packages), as systemd reads them."""
    site, out = rendered
    if site.controlPlane.loadBalancerMode != "host-services":
        assert not list(out.glob("*/etc/systemd/system/*.service.d/*.conf"))
        return
    analyze = need("systemd-analyze")
    units = tmp_path / "units"
    for name in ("keepalived", "haproxy"):
        packaged = Path(f"/lib/systemd/system/{name}.service")
        if not packaged.is_file():
            pytest.fail(f"{packaged} is missing: apt-get install -y {name}", pytrace=False)
        (units / f"{name}.service.d").mkdir(parents=True)
        shutil.copy(packaged, units)
        shutil.copy(
            out / site.init_node.name / f"etc/systemd/system/{name}.service.d/10-nodekiln.conf",
            units / f"{name}.service.d",
        )
    result = subprocess.run(
        [analyze, "verify", "keepalived.service", "haproxy.service"], cwd=units, capture_output=True, text=True
    )
    text = result.stdout + result.stderr
    assert result.returncode == 0, text
    assert "10-nodekiln.conf" not in text, text  # no unknown key or bad value in our drop-ins


def test_check_script_is_posix_sh(rendered):
    site, out = rendered
    for cp in site.control_planes:
        script = out / cp.name / "etc/keepalived/check_apiserver.sh"
        assert subprocess.run(["sh", "-n", script]).returncode == 0
        # nothing listens here: it must fail, quickly
        result = subprocess.run([need("unshare"), "-n", script], capture_output=True, text=True, timeout=30)
        assert result.returncode == 1 and "check_apiserver: GET https://127.0.0.1:6443/healthz failed" in result.stderr
