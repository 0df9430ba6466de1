"""The site file: every rule of the foundation issue, each with the message a person reads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodekiln.config.site import json_schema, load_site
from nodekiln.errors import SiteError
from testing.synthetic import site_yaml

REPO = Path(__file__).resolve().parents[2]


def problems(path: Path) -> list[str]:
    with pytest.raises(SiteError) as info:
        load_site(path)
    return [str(p) for p in info.value.problems]


def one_problem(path: Path, field: str, words: str) -> str:
    found = problems(path)
    matching = [p for p in found if f" {field}:" in p and words in p]
    assert matching, f"no problem at {field} mentioning {words!r} in {found}"
    return matching[0]


def test_example_site_is_valid():
    site = load_site(REPO / "sites/example/site.yaml")
    assert site.name == "vlic-lab"
    assert [n.name for n in site.control_planes] == ["master01", "master02", "master03"]
    assert site.endpoint == "10.0.1.128:7443"
    assert site.init_node.name == "master01"


def test_unknown_field_names_line_and_path(site_file):
    path = site_file(lambda d: d["controlPlane"].update(virtualRouterID=7))
    message = one_problem(path, "controlPlane.virtualRouterID", "unknown field")
    line = int(message.split(":")[1])
    assert "virtualRouterID" in path.read_text().splitlines()[line - 1]
    assert message.startswith(str(path))


def test_wrong_type(site_file):
    one_problem(
        site_file(lambda d: d["controlPlane"].update(virtualRouterId="fifty")),
        "controlPlane.virtualRouterId",
        "valid integer",
    )


def test_unquoted_version_gets_a_hint(site_file):
    one_problem(site_file(lambda d: d["kubernetes"].update(version=1.31)), "kubernetes.version", "quotes")


@pytest.mark.parametrize("version", ["1.30.9", "1.36.0", "2.0.1", "latest"])
def test_kubernetes_version_outside_supported_range(site_file, version):
    one_problem(site_file(lambda d: d["kubernetes"].update(version=version)), "kubernetes.version", "1.31")


@pytest.mark.parametrize("name", ["Master01", "master_01", "-a", "x" * 64])
def test_node_name_must_be_dns_1123(site_file, name):
    one_problem(site_file(lambda d: d["nodes"][0].update(name=name)), "nodes[0].name", "DNS-1123")


def test_repeated_node_name(site_file):
    one_problem(site_file(lambda d: d["nodes"][4].update(name="worker01")), "nodes[4].name", "repeats nodes[3].name")


def test_duplicate_address(site_file):
    one_problem(
        site_file(lambda d: d["nodes"][1].update(address="10.0.1.92")), "nodes[1].address", "repeats nodes[0].address"
    )


def test_address_outside_network(site_file):
    one_problem(
        site_file(lambda d: d["nodes"][3].update(address="10.0.2.46")),
        "nodes[3].address",
        "not a host address of network.cidr",
    )


def test_vip_outside_network(site_file):
    one_problem(
        site_file(lambda d: d["controlPlane"]["endpoint"].update(vip="10.9.9.9")),
        "controlPlane.endpoint.vip",
        "not a host address",
    )


def test_vip_equal_to_node_address(site_file):
    one_problem(
        site_file(lambda d: d["controlPlane"]["endpoint"].update(vip="10.0.1.27")),
        "controlPlane.endpoint.vip",
        "master02",
    )


def test_pod_and_service_networks_overlap(site_file):
    one_problem(
        site_file(lambda d: d["kubernetes"].update(podSubnet="10.96.0.0/16")),
        "kubernetes.serviceSubnet",
        "overlaps kubernetes.podSubnet",
    )


def test_pod_network_overlaps_node_network(site_file):
    one_problem(
        site_file(lambda d: d["kubernetes"].update(podSubnet="10.0.0.0/16")),
        "network.cidr",
        "overlaps kubernetes.podSubnet",
    )


def test_even_number_of_control_planes(site_file):
    def change(doc):
        doc["nodes"][3]["role"] = "control-plane"

    one_problem(site_file(change), "nodes", "4 control planes")


def test_no_control_plane(site_file):
    def change(doc):
        for node in doc["nodes"]:
            node["role"] = "worker"

    one_problem(site_file(change), "nodes", "no node has role control-plane")


def test_no_load_balancer_with_three_control_planes(site_file):
    def change(doc):
        doc["controlPlane"] = {"loadBalancer": "none"}

    one_problem(site_file(change), "controlPlane.loadBalancer", "allows one control plane")


def test_no_load_balancer_single_control_plane_uses_its_address(site_file):
    def change(doc):
        doc["controlPlane"] = {"loadBalancer": "none"}
        doc["nodes"] = [n for n in doc["nodes"] if n["name"] not in ("master02", "master03")]

    site = load_site(site_file(change))
    assert site.endpoint == "10.0.1.92:6443"
    assert site.apiserver_port == 6443


def test_load_balancer_needs_a_vip(site_file):
    one_problem(site_file(lambda d: d["controlPlane"]["endpoint"].pop("vip")), "controlPlane.endpoint.vip", "required")


def test_endpoint_port_clashes_with_apiserver(site_file):
    one_problem(
        site_file(lambda d: d["controlPlane"]["endpoint"].update(port=6443)),
        "controlPlane.endpoint.port",
        "kube-apiserver",
    )


def test_unparsable_ssh_key(site_file):
    one_problem(
        site_file(lambda d: d["ssh"]["authorizedKeys"].append("ssh-ed25519 AAAA... ops@example")),
        "ssh.authorizedKeys[1]",
        "not an OpenSSH public key",
    )


def test_yaml_that_does_not_parse(site_file):
    [message] = problems(site_file(text="apiVersion: nodekiln/v1alpha1\nkind: Site\nnodes: [\n  {name: a\n"))
    assert "YAML does not parse" in message
    assert ":5:" in message or ":4:" in message


def test_repeated_yaml_key(site_file):
    text = (REPO / "sites/example/site.yaml").read_text().replace("kind: Site\n", "kind: Site\nkind: Site\n")
    one_problem(site_file(text=text), "kind", "key repeats")


def test_all_problems_reported_at_once(site_file):
    def change(doc):
        doc["metadata"]["name"] = "Bad"
        doc["controlPlane"]["bogus"] = True
        doc["nodes"][0]["role"] = "boss"

    found = problems(site_file(change))
    assert len(found) == 3, found


def test_all_cross_field_problems_reported_at_once(site_file):
    def change(doc):
        doc["nodes"][1]["address"] = "10.0.1.92"
        doc["nodes"][2]["address"] = "10.0.3.3"
        doc["controlPlane"]["endpoint"]["port"] = 6443

    assert len(problems(site_file(change))) == 3


def test_missing_file():
    with pytest.raises(SiteError, match="file not found"):
        load_site(Path("/nonexistent/site.yaml"))


def test_image_recipe_from_a_file_beside_the_site(site_file):
    path = site_file(lambda d: d.update(image="image.yaml"))
    (path.parent / "image.yaml").write_text("kubernetesSource: none\nformats: [qcow2, raw]\n")
    site = load_site(path)
    assert site.image.formats == ["qcow2", "raw"]
    (path.parent / "image.yaml").write_text("kubernetesSource: none\nformat: raw\n")
    message = one_problem(path, "format", "unknown field")
    assert str(path.parent / "image.yaml") in message


def test_validate_task_exits_2_without_traceback(site_file):
    path = site_file(lambda d: d["nodes"][1].update(address="10.0.1.92"))
    before = sorted(p.name for p in path.parent.iterdir())
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "validate", "--site", str(path)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert f"{path}:" in result.stderr and "nodes[1].address" in result.stderr
    assert sorted(p.name for p in path.parent.iterdir()) == before, "validate wrote something"


def test_site_env_var_is_the_default(site_file):
    path = site_file(lambda d: d["metadata"].update(name="from-env"))
    env = {**__import__("os").environ, "NODEKILN_SITE": str(path)}
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "validate"], cwd=REPO, capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "from-env" in result.stdout


def test_json_schema_describes_the_example(tmp_path):
    import jsonschema

    schema = json_schema()
    doc = yaml.safe_load((REPO / "sites/example/site.yaml").read_text())
    jsonschema.validate(doc, schema)
    doc["controlPlane"]["bogus"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema)


def test_thousand_node_site_validates(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(site_yaml(1000))
    assert len(load_site(path).nodes) == 1000
