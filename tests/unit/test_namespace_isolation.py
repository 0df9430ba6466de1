"""The namespace-isolation addon: its settings' errors (each naming its field), its place in the
plan, the policies it renders and the overlay that turns z2jh's Internet egress off for the labs."""

from __future__ import annotations

import json
import typing

import pytest
import yaml

from nodekiln.addons import plan_release_files as make_plan
from nodekiln.addons.plan import build_plan
from nodekiln.config.site import load_site
from tests.unit.test_site import one_problem, problems


def isolation(change):
    def apply(doc: dict[str, typing.Any]) -> None:
        change(doc["addons"].setdefault("namespaceIsolation", {"enabled": True}))

    return apply


def listing(*entries):
    return isolation(lambda s: s.update(namespaces=list(entries)))


LABS = {"namespace": "naavre", "podSelector": {"component": "singleuser-server"}}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (
            listing(LABS, {"namespace": "minio", "egress": [{"cidr": "10.0.1.10/8"}]}),
            "addons.namespaceIsolation.namespaces[1].egress[0].cidr",
            "IPv4 network",
        ),
        (
            listing(LABS, {"namespace": "minio", "egress": [{"cidr": "10.0.1.300/32"}]}),
            "addons.namespaceIsolation.namespaces[1].egress[0].cidr",
            "IPv4 network",
        ),
        (
            listing(LABS, {"namespace": "minio", "egress": [{"cidr": "10.0.0.0/8", "ports": [{"port": 0}]}]}),
            "addons.namespaceIsolation.namespaces[1].egress[0].ports[0].port",
            "greater than or equal to 1",
        ),
        (
            listing(LABS, {"namespace": "minio"}, {"namespace": "minio"}),
            "addons.namespaceIsolation.namespaces[2].namespace",
            "repeats addons.namespaceIsolation.namespaces[1]",
        ),
        (
            listing(LABS, {"namespace": "tenant-a"}),
            "addons.namespaceIsolation.namespaces[1].namespace",
            "set external: true",
        ),
        (
            listing({"namespace": "naavre"}),
            "addons.namespaceIsolation.namespaces[0].podSelector",
            "required for NaaVRE's namespace",
        ),
        (listing({"namespace": "kube-system"}), "addons.namespaceIsolation.namespaces[0].namespace", "Kubernetes' own"),
        (
            listing({"namespace": "minio", "podSelector": {"bad key!": "x"}}),
            "addons.namespaceIsolation.namespaces[0].podSelector",
            "label key 'bad key!' is not a valid Kubernetes label name",
        ),
        (
            listing({"namespace": "minio", "ingressFrom": ["minio"]}),
            "addons.namespaceIsolation.namespaces[0].ingressFrom[0]",
            "the namespace itself",
        ),
        (isolation(lambda s: s.update(kubeSystem="none")), "addons.namespaceIsolation.kubeSystem", "'all' or 'dns'"),
    ],
)
def test_bad_settings_are_named(site_file, change, field, words):
    one_problem(site_file(change), field, words)


def test_isolation_needs_calico_to_enforce_it(site_file):
    def off(doc):
        doc["addons"]["calico"] = {"enabled": False}

    found = problems(site_file(off))
    assert [p.split(": ", 1)[1] for p in found] == [
        "addons.namespaceIsolation.enabled: NetworkPolicies do nothing unless the CNI enforces them: "
        "turn addons.calico on"
    ], found


def test_the_default_needs_naavre(site_file):
    def no_naavre(doc):
        doc["addons"]["naavre"]["enabled"] = False

    one_problem(site_file(no_naavre), "addons.namespaceIsolation.namespaces", "required when NaaVRE is off")
    # a listed namespace of another release is fine without NaaVRE
    assert load_site(site_file(lambda d: (no_naavre(d), listing({"namespace": "minio"})(d))))


def test_an_external_namespace_is_accepted(site_file):
    site = load_site(site_file(listing(LABS, {"namespace": "tenant-a", "external": True})))
    plan = build_plan(site)
    values = yaml.safe_load(plan.files["namespace-isolation.values.yaml"][0])
    assert [p["namespace"] for p in values["policies"]] == ["naavre", "tenant-a"]


def test_comes_after_naavre_and_after_the_releases_owning_its_namespaces(site_file, tmp_path):
    plan = build_plan(load_site(site_file()))
    names = [r.name for r in plan.releases]
    assert names[-2:] == ["naavre", "namespace-isolation"]
    release = plan.release("namespace-isolation")
    assert release.namespace == "kube-system"
    # keycloak-operator also installs into naavre (it creates the namespace if it comes first)
    assert set(release.depends_on) == {"calico", "naavre", "keycloak-operator"}

    chart = tmp_path / "tenant-chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tenant\nversion: 0.1.0\n")

    def tenant(doc):
        listing(LABS, {"namespace": "tenant-a"})(doc)
        doc["addons"]["releases"] = [{"name": "tenant", "namespace": "tenant-a", "chart": str(chart)}]

    plan = build_plan(load_site(site_file(tenant)))
    names = [r.name for r in plan.releases]
    assert names.index("tenant") < names.index("namespace-isolation")
    assert "tenant" in plan.release("namespace-isolation").depends_on


def test_a_site_release_in_a_listed_namespace_cannot_wait_for_the_isolation(site_file, tmp_path):
    """The isolation comes after every release installing into a listed namespace: one that also
    depends on namespace-isolation makes a circle, named when the site is checked."""
    chart = tmp_path / "tenant-chart"
    chart.mkdir()
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tenant\nversion: 0.1.0\n")

    def tenant(doc):
        listing(LABS, {"namespace": "tenant-a"})(doc)
        doc["addons"]["releases"] = [
            {"name": "tenant", "namespace": "tenant-a", "chart": str(chart), "dependsOn": ["namespace-isolation"]}
        ]

    one_problem(
        site_file(tenant),
        "addons.releases[0].dependsOn",
        "dependencies form a circle: tenant -> namespace-isolation -> tenant",
    )


EXPECTED_LABS = {
    "name": "namespace-isolation",
    "namespace": "naavre",
    "podSelector": {"matchLabels": {"component": "singleuser-server"}},
    "egress": [
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "naavre"}}}]},
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]},
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
        },
        {"to": [{"ipBlock": {"cidr": "10.0.1.129/32"}}], "ports": [{"port": 443, "protocol": "TCP"}]},
    ],
    # the labs' own namespace, and the monitoring addon's (on in the example)
    "ingress": [
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "naavre"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
            ]
        }
    ],
}


def test_example_values_are_the_talks_policy_for_the_labs(example_site):
    plan = build_plan(load_site(example_site))
    values = yaml.safe_load(plan.files["namespace-isolation.values.yaml"][0])
    assert values == {"policies": [EXPECTED_LABS]}


def _ns(name):
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def test_whole_namespace_without_an_edge_with_monitoring_and_extras(site_file):
    def change(doc):
        doc.pop("edge")
        doc["addons"]["ingress"]["serviceType"] = "LoadBalancer"
        doc["addons"]["certificates"]["enabled"] = False
        # the monitoring addon in another namespace: Prometheus' pods there may scrape
        doc["addons"]["monitoring"]["namespace"] = "observability"
        listing(
            {
                "namespace": "minio",
                "egress": [{"cidr": "10.0.1.10/32", "ports": [{"port": 2049}, {"port": 111, "protocol": "UDP"}]}],
                "ingressFrom": ["velero"],
            }
        )(doc)
        doc["addons"]["namespaceIsolation"]["kubeSystem"] = "dns"

    plan = build_plan(load_site(site_file(change)))
    (policy,) = yaml.safe_load(plan.files["namespace-isolation.values.yaml"][0])["policies"]
    assert policy["podSelector"] == {}
    assert [rule["to"] for rule in policy["egress"]] == [
        [_ns("minio")],
        [{**_ns("kube-system"), "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        [_ns("ingress")],  # no edge: NaaVRE's public URL is the ingress controller
        [{"ipBlock": {"cidr": "10.0.1.10/32"}}],
    ]
    assert policy["egress"][-1]["ports"] == [{"port": 2049, "protocol": "TCP"}, {"port": 111, "protocol": "UDP"}]
    assert policy["ingress"] == [{"from": [_ns("minio"), _ns("ingress"), _ns("observability"), _ns("velero")]}]
    # NaaVRE's labs are not isolated: z2jh's own egress stays as it is
    assert _singleuser(plan) is None


def _singleuser(plan) -> dict | None:
    """What NaaVRE's overlay sets for z2jh's labs (its hub part is the monitoring addon's)."""
    overlay = yaml.safe_load(plan.files["naavre.overlay.yaml"][0])
    return (overlay.get("jupyterhub") or {}).get("singleuser")


def test_the_naavre_overlay_turns_z2jhs_internet_egress_off_only_for_isolated_labs(site_file, tmp_path):
    site = load_site(site_file())
    plan, plan_file = make_plan(site, tmp_path / "out")
    assert _singleuser(plan) == {"networkPolicy": {"egressAllowRules": {"nonPrivateIPs": False}}}
    entry = next(r for r in json.loads(plan_file.read_text())["releases"] if r["name"] == "naavre")
    assert entry["overlay"] == "naavre.overlay.yaml" and len(entry["overlaySha256"]) == 64
    assert (plan_file.parent / "naavre.overlay.yaml").is_file()

    off = build_plan(load_site(site_file(isolation(lambda s: s.update(enabled=False)))))
    assert _singleuser(off) is None
    assert "namespace-isolation" not in [r.name for r in off.releases]
    # a selector that does not take in the labs (another component) leaves z2jh's egress too
    other = build_plan(load_site(site_file(listing({"namespace": "naavre", "podSelector": {"component": "hub"}}))))
    assert _singleuser(other) is None
