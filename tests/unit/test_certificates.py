"""The certificates addon: its settings, its ClusterIssuers, and the edge passing cert-manager's
HTTP-01 challenges to the ingress while its own certbot is not answering one."""

from __future__ import annotations

import typing

import pytest
import yaml

from nodekiln.addons.contexts import ISSUERS
from nodekiln.addons.plan import build_plan
from nodekiln.bootstrap.edge import PATHS, cluster_acme_port, edge_files, haproxy_cfg
from nodekiln.config.addons import Certificates
from nodekiln.config.edge import ACME_DIRECTORIES
from nodekiln.config.site import load_site
from nodekiln.secrets import SecretStore
from tests.unit.test_site import one_problem, problems


def addons(change):
    def apply(doc: dict[str, typing.Any]) -> None:
        change(doc["addons"])

    return apply


def test_issuers_are_the_settings_choices_and_lets_encrypts_directories():
    choices = typing.get_args(Certificates.model_fields["issuer"].annotation)
    assert sorted(ISSUERS) == sorted(choices)
    assert set(ISSUERS.values()) == set(ACME_DIRECTORIES.values())


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        (addons(lambda a: a["certificates"].update(email="ops")), "addons.certificates.email", "e-mail address"),
        (addons(lambda a: a["certificates"].update(issuer="zerossl")), "addons.certificates.issuer", "letsencrypt-"),
        (addons(lambda a: a["certManager"].update(enabled=False)), "addons.certificates.enabled", "certManager on"),
        (
            addons(lambda a: a["ingress"].update(serviceType="LoadBalancer")),
            "addons.ingress.serviceType",
            "HTTP NodePort",
        ),
    ],
)
def test_bad_settings_are_named(site_file, change, field, words):
    if field == "addons.ingress.serviceType":  # the edge then also needs its backend port given
        original = change

        def change(doc):
            original(doc)
            doc["edge"]["backendPort"] = 31000

    one_problem(site_file(change), field, words)


def test_the_email_is_the_edges_unless_given_and_required_without_an_edge(site_file):
    def without(doc):
        doc["addons"]["certificates"].pop("email")

    site = load_site(site_file(without))
    assert site.addons.certificates.account_email(site) == site.edge.acme.email

    def no_edge(doc):
        without(doc)
        doc.pop("edge")
        doc["addons"]["ingress"]["serviceType"] = "LoadBalancer"

    found = problems(site_file(no_edge))
    assert len(found) == 1 and found[0].split(": ", 1)[1].startswith("addons.certificates.email: required"), found


def test_cluster_issuers_values(example_site):
    plan = build_plan(load_site(example_site))
    values = yaml.safe_load(plan.files["certificates.values.yaml"][0])
    assert values == {
        "issuers": [
            {"name": name, "server": server, "email": "ops@example.org", "ingressClassName": "nginx"}
            for name, server in ISSUERS.items()
        ]
    }
    names = [r.name for r in plan.releases]
    assert names.index("cert-manager") < names.index("certificates") < names.index("naavre")
    certificates = next(r for r in plan.releases if r.name == "certificates")
    assert set(certificates.depends_on) == {"cert-manager", "ingress"}


def test_edge_sends_challenges_to_certbot_only_while_it_runs(site_file):
    site = load_site(site_file())
    cfg = haproxy_cfg(site, site.edge_nodes[0])
    backend = cfg.split("backend acme\n")[1].split("\n\n")[0]
    lines = [line.strip() for line in backend.splitlines() if not line.strip().startswith("#")]
    port = site.addons.ingress.nodePorts.http
    assert cluster_acme_port(site) == port == 32080
    assert "server certbot 127.0.0.1:8402 disabled" in lines
    workers = [line for line in lines if " backup " in line]
    assert [w.split()[1:3] for w in workers] == [[n.name, f"{n.address}:{port}"] for n in site.workers]
    assert "option allbackups" in lines
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    files = {f.path: f for f in edge_files(site, secrets, site.edge_nodes[0])}
    ini = files[PATHS["certbot_ini"]].content
    assert f"pre-hook = {PATHS['acme_route']} ready" in ini and f"post-hook = {PATHS['acme_route']} maint" in ini
    assert files[PATHS["acme_route"]].mode == 0o755

    # without the certificates addon nothing but certbot answers challenges
    site = load_site(site_file(addons(lambda a: a["certificates"].update(enabled=False))))
    cfg = haproxy_cfg(site, site.edge_nodes[0])
    assert cluster_acme_port(site) is None
    assert " backup " not in cfg.split("backend acme\n")[1].split("\n\n")[0]
