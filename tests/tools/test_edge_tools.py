"""The edge nodes' files, checked by the programs that read them: HAProxy (with the placeholder
certificate the rendered script makes with the real openssl), nft, keepalived, systemd, sh."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from nodekiln.bootstrap.edge import PATHS, edge_files
from nodekiln.config.site import Site, load_site
from nodekiln.secrets import SecretStore
from tests.tools.conftest import keepalived_test, require

pytestmark = pytest.mark.tools


def other_ca(directory: Path) -> str:
    """A real CA certificate for the backup cluster, made with openssl."""
    openssl = require("openssl")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", "/CN=other cluster CA", "-keyout", str(directory / "other.key"), "-out", str(directory / "other-ca.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return "other-ca.pem"


def one_edge(doc: dict[str, Any]) -> None:
    doc["edge"]["nodes"] = doc["edge"]["nodes"][:1]
    doc["edge"].pop("vip")


def with_backups(doc: dict[str, Any]) -> None:
    doc["edge"]["backups"] = [
        {"name": "other01", "address": "10.0.2.46", "port": 443},
        {"name": "other02", "address": "ingress.other.example.org"},
    ]
    doc["edge"]["backupCAFile"] = "other-ca.pem"
    doc["edge"]["acme"] = {
        "directory": "https://acme.example.org/dir",
        "email": "ops@example.org",
        "caFile": "other-ca.pem",
    }


VARIANTS = {"pair": None, "one-edge": one_edge, "backups": with_backups}


@pytest.fixture(params=sorted(VARIANTS))
def edge_out(request, site_file, tmp_path) -> tuple[Site, Path]:
    path = site_file(VARIANTS[request.param])
    other_ca(path.parent)
    site = load_site(path)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    out = tmp_path / "edge"
    for node in site.edge_nodes:
        for f in edge_files(site, secrets, node):
            target = out / node.name / f.path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f.content)
            target.chmod(f.mode)
    return site, out


def in_place(root: Path, script: str) -> subprocess.CompletedProcess[str]:
    """`script` in a mount namespace where the node's /etc/haproxy and /etc/nodekiln are the rendered ones."""
    unshare = require("unshare")
    # a bind mount needs its target: on a clean machine /etc/nodekiln does not exist yet (an empty
    # folder is left behind; nothing is written into the host's /etc)
    setup = "".join(
        f"mkdir -p {root}/{d} /{d} && mount --bind {root}/{d} /{d} && " for d in ("etc/haproxy", "etc/nodekiln")
    )
    return subprocess.run(
        [unshare, "-m", "--propagation", "private", "sh", "-c", setup + script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_haproxy_accepts_every_edge_config(edge_out):
    """Before the first certificate (the placeholder) and after the deploy hook swapped one in."""
    site, out = edge_out
    haproxy = require("haproxy")
    require("openssl")
    assert site.edge_nodes
    for node in site.edge_nodes:
        root = out / node.name
        result = in_place(
            root,
            f"sh {PATHS['placeholder']} && {haproxy} -c -f {PATHS['haproxy_cfg']} && openssl x509 -noout -ext subjectAltName -in {PATHS['certificate']}",
        )
        text = result.stdout + result.stderr
        assert result.returncode == 0 and "Configuration file is valid" in text, text
        # a backup named by DNS that does not resolve here (no DNS) is disabled, not fatal
        warnings = [w for w in text.splitlines() if "WARNING" in w and "could not resolve address" not in w]
        assert warnings == [], text
        for domain in site.edge.domains:  # type: ignore[union-attr]
            assert f"DNS:{domain}" in text
        # the placeholder is never replaced once a certificate exists
        pem = root / PATHS["certificate"].lstrip("/")
        before = pem.read_bytes()
        assert in_place(root, f"sh {PATHS['placeholder']}").returncode == 0
        assert pem.read_bytes() == before


def test_haproxy_check_catches_a_missing_certificate(edge_out):
    site, out = edge_out
    root = out / site.edge_nodes[0].name
    result = in_place(root, f"{require('haproxy')} -c -f {PATHS['haproxy_cfg']}")
    assert result.returncode != 0 and "site.pem" in result.stdout + result.stderr


def test_deploy_hook_swaps_the_pem_and_keeps_the_last_good_one(edge_out, tmp_path):
    """The hook with a lineage certbot would leave: a good one is installed (chain, then key);
    one HAProxy refuses (a key that does not match) leaves the last good PEM in place."""
    site, out = edge_out
    root = out / site.edge_nodes[0].name
    openssl = require("openssl")
    require("haproxy")
    live = tmp_path / "live"
    live.mkdir()
    domain = site.edge.domains[0]  # type: ignore[union-attr]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
         "-subj", f"/CN={domain}", "-keyout", str(live / "privkey.pem"), "-out", str(live / "fullchain.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    hook = f"RENEWED_LINEAGE={live} sh {PATHS['deploy_hook']}"
    result = in_place(root, f"sh {PATHS['placeholder']} && {hook}")
    assert result.returncode == 0, result.stdout + result.stderr
    pem = root / PATHS["certificate"].lstrip("/")
    assert pem.read_text() == (live / "fullchain.pem").read_text() + (live / "privkey.pem").read_text()
    assert pem.stat().st_mode & 0o777 == 0o600
    good = pem.read_bytes()
    subprocess.run(
        [openssl, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(live / "privkey.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    result = in_place(root, hook)
    assert result.returncode != 0 and "the last good one stays" in result.stderr
    assert pem.read_bytes() == good
    assert sorted(p.name for p in pem.parent.iterdir()) == ["site.pem"]


def test_nft_accepts_the_edge_ruleset(edge_out):
    site, out = edge_out
    nft, unshare = require("nft"), require("unshare")
    for node in site.edge_nodes:
        ruleset = out / node.name / "etc/nftables.conf"
        result = subprocess.run(
            [unshare, "-n", "sh", "-c", f"{nft} -c -f {ruleset} && {nft} -f {ruleset} && {nft} -f {ruleset} && {nft} list table inet nodekiln"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "tcp dport { 80, 443 } accept" in result.stdout
        assert ("ip protocol vrrp" in result.stdout) == (len(site.edge_nodes) == 2), result.stdout


def test_keepalived_accepts_the_edge_pair(edge_out):
    site, out = edge_out
    if len(site.edge_nodes) != 2:
        assert not any((out / n.name / "etc/keepalived").exists() for n in site.edge_nodes)
        return
    for node in site.edge_nodes:
        code, text = keepalived_test(out / node.name / "etc/keepalived", site.controlPlane.interface)
        assert code in (0, 143, -15) and text == "", f"exit {code}: {text}"


def unit_problems(units: dict[str, str], work: Path) -> list[str]:
    """What `systemd-analyze verify` says of the units (named as on the node), less the one
    expected complaint: the scripts they run live on the node, not here."""
    work.mkdir()
    for name, text in units.items():
        (work / name).write_text(text)
    result = subprocess.run(
        [require("systemd-analyze"), "verify", *(str(work / n) for n in units)], capture_output=True, text=True
    )
    return [
        line
        for line in result.stderr.splitlines()
        if "nodekiln-edge" in line and f"{PATHS['issue']} is not executable" not in line
    ]


def test_units_pass_systemd_analyze(edge_out, tmp_path):
    site, out = edge_out
    root = out / site.edge_nodes[0].name
    units = {Path(PATHS[k]).name: (root / PATHS[k].lstrip("/")).read_text() for k in ("service", "timer")}
    assert unit_problems(units, tmp_path / "good") == []
    broken = {n: t.replace("OnUnitActiveSec", "OnUnitActiveSecs") for n, t in units.items()}
    assert unit_problems(broken, tmp_path / "broken"), "the check cannot fail"


def test_scripts_are_valid_sh(edge_out):
    site, out = edge_out
    root = out / site.edge_nodes[0].name
    for key in ("issue", "deploy_hook", "placeholder"):
        result = subprocess.run(["sh", "-n", str(root / PATHS[key].lstrip("/"))], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
