"""Rendered user-data, network-config and kubeadm configuration, checked by real readers:
cloud-init's own schema validator and network parser (Debian 12's cloud-init), and a strict
JSON Schema of the kubeadm v1beta4 fields nodekiln emits (kubeadm itself cannot be installed
here: no Kubernetes package repository is reachable)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.tools.conftest import require

pytestmark = pytest.mark.tools
SCHEMA = json.loads((Path(__file__).parent / "schemas" / "kubeadm-v1beta4.json").read_text())
SYSTEM_PYTHON = "/usr/bin/python3"  # the interpreter Debian's cloud-init package runs on


def write_files(user_data: Path) -> dict[str, str]:
    config = yaml.safe_load(user_data.read_text())
    return {f["path"]: f["content"] for f in config["write_files"]}


def test_user_data_passes_cloud_init_schema(rendered):
    site, out = rendered
    tool = require("cloud-init")
    for node in site.machines:  # the edge nodes' too
        result = subprocess.run(
            [tool, "schema", "-c", str(out / node.name / "user-data")], capture_output=True, text=True
        )
        assert result.returncode == 0 and "Valid cloud-config" in result.stdout, result.stdout + result.stderr


def test_cloud_init_schema_catches_a_broken_file(tmp_path):
    """The check above can fail: a wrong type is reported by the same command."""
    bad = tmp_path / "user-data"
    bad.write_text("#cloud-config\nssh_pwauth: false\nwrite_files: {path: /x}\n")
    result = subprocess.run([require("cloud-init"), "schema", "-c", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0


def test_network_config_parses_and_renders_with_cloud_init(rendered):
    site, out = rendered
    require("cloud-init")
    script = (
        "import sys, yaml\n"
        "from cloudinit.net.network_state import parse_net_config_data\n"
        "from cloudinit.net import networkd, eni\n"
        "state = parse_net_config_data(yaml.safe_load(open(sys.argv[1])), skip_broken=False)\n"
        "print(yaml.safe_dump({'networkd': networkd.Renderer()._render_content(state), 'eni': eni.Renderer()._render_interfaces(state)}))\n"
    )
    for node in site.nodes:
        result = subprocess.run(
            [SYSTEM_PYTHON, "-c", script, str(out / node.name / "network-config")], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-2000:]
        rendered_units = yaml.safe_load(result.stdout)
        unit = rendered_units["networkd"][site.controlPlane.interface]
        assert f"Address={node.address}/{site.network.cidr.prefixlen}" in unit
        assert f"Gateway={site.network.gateway}" in unit
        assert f"address {node.address}/{site.network.cidr.prefixlen}" in rendered_units["eni"]


def test_kubeadm_configuration_matches_v1beta4(rendered):
    site, out = rendered
    for node in site.nodes:
        text = write_files(out / node.name / "user-data")["/etc/nodekiln/kubeadm.yaml"]
        kinds = []
        for doc in yaml.safe_load_all(text):
            jsonschema.validate(doc, SCHEMA)
            kinds.append(doc["kind"])
        if node.name == site.init_node.name:
            # kube-proxy's configuration with its metrics address only when monitoring is on
            proxy = ["KubeProxyConfiguration"] if site.metrics_exposed else []
            assert kinds == ["InitConfiguration", "ClusterConfiguration", "KubeletConfiguration", *proxy]
        else:
            assert kinds == ["JoinConfiguration"]


def test_kubeadm_schema_rejects_invented_fields():
    doc = {
        "apiVersion": "kubeadm.k8s.io/v1beta4",
        "kind": "JoinConfiguration",
        "discovery": {
            "bootstrapToken": {
                "token": "abcdef.0123456789abcdef",
                "apiServerEndpoint": "1.2.3.4:7443",
                "caCertHashes": ["sha256:" + "0" * 64],
            }
        },
    }
    jsonschema.validate(doc, SCHEMA)
    doc["controlPlane"] = {"certificateKeys": "x"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_bootstrap_script_is_valid_bash(rendered):
    site, out = rendered
    for node in site.nodes:
        files = write_files(out / node.name / "user-data")
        result = subprocess.run(
            ["bash", "-n"], input=files["/etc/nodekiln/bootstrap.sh"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


def systemd_problems(unit_text: str, tmp_path: Path) -> list[str]:
    unit = tmp_path / "nodekiln-bootstrap.service"
    unit.write_text(unit_text)
    result = subprocess.run([require("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True)
    # The script lives on the node, not on this machine: that one complaint is expected.
    return [
        line
        for line in result.stderr.splitlines()
        if "nodekiln-bootstrap" in line and "/etc/nodekiln/bootstrap.sh is not executable" not in line
    ]


def test_bootstrap_unit_passes_systemd_analyze(rendered, tmp_path):
    """systemd-analyze verify reads the unit as systemd would."""
    site, out = rendered
    files = write_files(out / site.nodes[0].name / "user-data")
    text = files["/etc/systemd/system/nodekiln-bootstrap.service"]
    assert systemd_problems(text, tmp_path) == []
    assert systemd_problems(text.replace("Type=oneshot", "Type=oneshoot"), tmp_path), "the check cannot fail"
