"""namespace-isolation with the real charts: every NetworkPolicy the example site renders (its own
and z2jh's in the naavre release) evaluated with testing/netpol.py, as Calico would enforce them."""

from __future__ import annotations

import pytest
import yaml

from nodekiln.addons.render import values_files
from testing.netpol import Address, Pod, Policies

pytestmark = pytest.mark.tools

# A lab pod as KubeSpawner labels it (z2jh 4.1.0 files/hub/jupyterhub_config.py common_labels,
# singleuser.extraLabels in values.yaml) with its notebook port.
LAB = Pod(
    "naavre",
    {
        "component": "singleuser-server",
        "app": "jupyterhub",
        "release": "naavre",
        "heritage": "jupyterhub",
        "hub.jupyter.org/network-access-hub": "true",
    },
    ip="192.168.10.5",
    ports={"notebook-port": 8888},
)
HUB = Pod(
    "naavre",
    {"component": "hub", "app": "jupyterhub", "release": "naavre", "hub.jupyter.org/network-access-singleuser": "true"},
    ip="192.168.10.6",
    ports={"http": 8081},
)
NEIGHBOUR = Pod("naavre", {"app": "naavre-catalogue-service"}, ip="192.168.10.7")
KUBE_DNS = Pod("kube-system", {"k8s-app": "kube-dns"}, ip="192.168.0.10", ports={"dns": 53})
MINIO = Pod("minio", {"app": "minio", "release": "minio"}, ip="192.168.20.3")
INTERNET = Address("1.1.1.1")


def _policies(objects_by_release) -> Policies:
    return Policies.of((namespace, item) for namespace, objects in objects_by_release for item in objects)


@pytest.fixture(scope="module")
def policies(example_render) -> Policies:
    return _policies((r.release.namespace, r.objects) for r in example_render.releases.values())


def test_its_policies_are_rendered_and_checked(example_render):
    ours = example_render.releases["namespace-isolation"].of_kind("NetworkPolicy")
    assert [(p["metadata"]["namespace"], p["metadata"]["name"]) for p in ours] == [("naavre", "namespace-isolation")]
    assert ours[0]["spec"]["policyTypes"] == ["Ingress", "Egress"]
    # z2jh's singleuser policy is there too: the evaluation below sees both
    z2jh = [p["metadata"]["name"] for p in example_render.releases["naavre"].of_kind("NetworkPolicy")]
    assert "naavre-jupyter-singleuser" in z2jh, z2jh
    assert example_render.problems() == []


def test_labs_reach_dns_their_namespace_and_naavres_public_url(policies, example_render):
    edge = str(example_render.site.edge_address)
    assert policies.allows(LAB, KUBE_DNS, 53, "UDP")
    assert policies.allows(LAB, KUBE_DNS, 53, "TCP")
    assert policies.allows(LAB, Address(edge), 443)
    assert policies.allows(LAB, HUB, 8081)
    assert policies.allows(LAB, NEIGHBOUR, 8080)


def test_labs_reach_nothing_else(policies, example_render):
    edge = str(example_render.site.edge_address)
    assert not policies.allows(LAB, INTERNET, 443)
    assert not policies.allows(LAB, INTERNET, 80)
    assert not policies.allows(LAB, MINIO, 9000)
    assert not policies.allows(LAB, Address(edge), 22)
    assert not policies.allows(LAB, Address("10.0.1.128"), 7443)  # the API server's VIP


def test_other_namespaces_cannot_connect_to_the_labs(policies):
    assert not policies.allows(MINIO, LAB, 8888)
    assert policies.allows(HUB, LAB, 8888)  # z2jh's proxy and hub, from the same namespace
    # pods outside the isolation keep their own rules: MinIO has none
    assert policies.allows(MINIO, INTERNET, 443)


def test_without_the_overlay_z2jh_would_let_the_labs_reach_the_internet(example_render, tmp_path):
    """The overlay is what closes the Internet: z2jh's policy alone (nonPrivateIPs true) opens it."""
    plan, helm = example_render.plan, example_render.helm
    naavre = plan.release("naavre")
    files = values_files(plan, naavre, helm)
    assert files[-1].name == "naavre.overlay.yaml"
    text = helm.template(
        naavre.name,
        naavre.chart_ref,
        naavre.namespace,
        files[:-1],
        kube_version=example_render.site.kubernetes.version,
        skip_tests=True,
    )
    without = [item for item in yaml.safe_load_all(text) if isinstance(item, dict)]
    releases = [
        (r.release.namespace, without if name == "naavre" else r.objects) for name, r in example_render.releases.items()
    ]
    policies = _policies(releases)
    assert policies.allows(LAB, INTERNET, 443)
    # and the isolation policy alone, without z2jh's, would not
    ours = _policies([("kube-system", example_render.releases["namespace-isolation"].objects)])
    assert not ours.allows(LAB, INTERNET, 443)
