"""The addons plan: order, values, files, and every bad input as a site-file error (no helm)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from nodekiln.addons import plan_release_files as make_plan
from nodekiln.addons.plan import build_plan, split_image
from nodekiln.config.addons import BUILTIN_KEYS, CycleError, order, release_name
from nodekiln.config.site import load_site
from nodekiln.errors import SiteError
from nodekiln.secrets import SecretStore

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "sites" / "example" / "site.yaml"


@pytest.fixture(scope="session")
def store_template(tmp_path_factory) -> Path:
    """The example site's secrets, made once (RSA keys are slow) and copied into each test."""
    from nodekiln.secrets import SecretStore

    folder = tmp_path_factory.mktemp("store")
    SecretStore(folder, "vlic-lab").create()
    return folder / ".nodekiln"


@pytest.fixture
def site_file(tmp_path: Path, store_template: Path) -> Path:
    target = tmp_path / "site" / "site.yaml"
    target.parent.mkdir()
    shutil.copy(EXAMPLE, target)
    shutil.copytree(store_template, target.parent / ".nodekiln")
    return target


def edit(site_file: Path, change) -> Path:
    doc = yaml.safe_load(site_file.read_text())
    change(doc)
    site_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    return site_file


def problems(site_file: Path) -> list[str]:
    with pytest.raises(SiteError) as info:
        load_site(site_file)
    return [f"{p.path}: {p.message}" for p in info.value.problems]


def test_example_plan_has_every_builtin_in_dependency_order(site_file):
    plan = build_plan(load_site(site_file))
    names = [r.name for r in plan.releases]
    # the example site turns every built-in on; none depends on a later one, so the order is AddonsSpec's
    assert names == [release_name(key) for key in BUILTIN_KEYS]
    assert names[:5] == ["calico", "nfs", "minio", "velero", "ingress"]
    position = {name: i for i, name in enumerate(names)}
    for release in plan.releases:
        assert all(position[d] < position[release.name] for d in release.depends_on), release.name


def test_dry_run_writes_plan_json_and_values_files(site_file, tmp_path):
    site = load_site(site_file)
    plan, plan_file = make_plan(site, tmp_path / "out")
    doc = json.loads(plan_file.read_text())
    assert [r["name"] for r in doc["releases"]] == [r.name for r in plan.releases]
    for entry in doc["releases"]:
        assert {"name", "namespace", "chart", "repo", "version", "values"} <= entry.keys()
        values = plan_file.parent / entry["values"]
        assert values.is_file()
        assert yaml.safe_load(values.read_text()) is not None
    naavre = next(r for r in doc["releases"] if r["name"] == "naavre")
    assert naavre["values"] == "naavre.root-values.yaml" and naavre["valuesChart"] == "values"
    assert naavre["source"]["git"] == "https://github.com/NaaVRE/NaaVRE-helm"


def test_values_with_secrets_are_0600_and_secrets_stay_out_of_the_plan(site_file, tmp_path):
    site = load_site(site_file)
    plan, plan_file = make_plan(site, tmp_path / "out")
    modes = {r.name: (plan_file.parent / r.values).stat().st_mode & 0o777 for r in plan.releases}
    # the ingress's values hold its default certificate's key (the example has an edge section)
    assert modes["minio"] == modes["velero"] == modes["naavre"] == modes["ingress"] == 0o600
    assert modes["calico"] == modes["nfs"] == 0o644
    store = yaml.safe_load((site_file.parent / ".nodekiln" / "vlic-lab.secrets.yaml").read_text())
    assert (site_file.parent / ".nodekiln" / "vlic-lab.secrets.yaml").stat().st_mode & 0o777 == 0o600
    text = plan_file.read_text()
    for value in store["extra"].values():
        assert value not in text
    assert store["extra"]["minio-root-password"] in (plan_file.parent / "minio.values.yaml").read_text()


def test_rendering_is_deterministic(site_file, tmp_path):
    site = load_site(site_file)
    _, first = make_plan(site, tmp_path / "a")
    _, second = make_plan(load_site(site_file), tmp_path / "b")
    for file in first.parent.iterdir():
        assert file.read_bytes() == (second.parent / file.name).read_bytes(), file.name


def test_calico_pool_is_the_pod_subnet_and_endpoint_the_vip(site_file):
    site = load_site(site_file)
    plan = build_plan(site)
    values = yaml.safe_load(plan.files["calico.values.yaml"][0])
    assert values["installation"]["calicoNetwork"]["ipPools"][0]["cidr"] == str(site.kubernetes.podSubnet)
    assert values["kubernetesServiceEndpoint"] == {"host": "10.0.1.128", "port": "7443"}


def test_velero_uses_minio_with_its_own_user(site_file):
    plan = build_plan(load_site(site_file))
    velero = yaml.safe_load(plan.files["velero.values.yaml"][0])
    minio = yaml.safe_load(plan.files["minio.values.yaml"][0])
    location = velero["configuration"]["backupStorageLocation"][0]
    assert location["config"]["s3Url"] == "http://minio.minio.svc.cluster.local:9000"
    assert location["bucket"] in [b["name"] for b in minio["buckets"]]
    key = minio["users"][0]["accessKey"]
    assert f"aws_access_key_id={key}" in velero["credentials"]["secretContents"]["cloud"]
    assert velero["deployNodeAgent"] is True and velero["configuration"]["uploaderType"] == "kopia"
    assert velero["schedules"]["daily"]["schedule"] == "0 2 * * *"


def test_ingress_serves_class_nginx(site_file):
    plan = build_plan(load_site(site_file))
    values = yaml.safe_load(plan.files["ingress.values.yaml"][0])
    assert values["providers"]["kubernetesIngressNGINX"]["ingressClass"] == "nginx"
    (ingress_class,) = [o for o in values["extraObjects"] if o["kind"] == "IngressClass"]
    assert (
        ingress_class["metadata"]["name"] == "nginx" and ingress_class["spec"]["controller"] == "k8s.io/ingress-nginx"
    )


def test_ingress_default_certificate_is_the_cluster_cas_for_the_edge(site_file):
    """The edge checks each worker's NodePort with `ssl verify required ca-file <cluster CA>`:
    Traefik's default certificate (served without SNI) is one the cluster CA signs."""
    from cryptography import x509

    site = load_site(site_file)
    values = yaml.safe_load(build_plan(site).files["ingress.values.yaml"][0])
    secret_name = values["tlsStore"]["default"]["defaultCertificate"]["secretName"]
    (secret,) = [o for o in values["extraObjects"] if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == secret_name and secret["type"] == "kubernetes.io/tls"
    cert = x509.load_pem_x509_certificate(secret["stringData"]["tls.crt"].encode())
    ca = x509.load_pem_x509_certificate(SecretStore(site.directory, site.name).load().ca.cert.encode())
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert names == ["ingress.vlic-lab.cluster.local", "naavre.vlic-lab.example.org"]
    assert "PRIVATE KEY" in secret["stringData"]["tls.key"]
    # made once: the next plan serves the same certificate
    again = yaml.safe_load(build_plan(load_site(site_file)).files["ingress.values.yaml"][0])
    assert [o for o in again["extraObjects"] if o["kind"] == "Secret"] == [secret]
    # without an edge section there is none
    doc = yaml.safe_load(site_file.read_text())
    doc.pop("edge")
    doc["addons"]["ingress"]["serviceType"] = "LoadBalancer"
    site_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    plain = yaml.safe_load(build_plan(load_site(site_file)).files["ingress.values.yaml"][0])
    assert "tlsStore" not in plain and [o["kind"] for o in plain["extraObjects"]] == ["IngressClass"]


def test_keycloak_operator_runs_in_naavres_namespace(site_file):
    plan = build_plan(load_site(site_file))
    assert plan.release("keycloak-operator").namespace == plan.release("naavre").namespace == "naavre"


def test_images_are_pinned_and_set_in_values(site_file):
    plan = build_plan(load_site(site_file))
    for release in plan.releases:
        values = plan.files[release.values][0].decode()
        for image in release.images:
            assert ":" in image.rsplit("/", 1)[-1], image
            assert split_image(image)[2] in values, (release.name, image)  # the values set the pinned tag
    assert "docker.io/velero/velero-plugin-for-aws:v1.13.0" in plan.release("velero").images
    assert split_image("quay.io/tigera/operator:v1.38.6") == ("quay.io", "tigera/operator", "v1.38.6")
    assert split_image("traefik:v3.7.8") == ("docker.io", "library/traefik", "v3.7.8")


def test_user_secret_missing_is_reported_not_invented(site_file, monkeypatch):
    monkeypatch.delenv("NODEKILN_SECRET_NAAVRE_VLAB_OPENLAB_CELL_GITHUB_TOKEN", raising=False)
    plan = build_plan(load_site(site_file))
    assert plan.missing_secrets == [
        ("naavre-vlab-openlab-cell-github-token", "NODEKILN_SECRET_NAAVRE_VLAB_OPENLAB_CELL_GITHUB_TOKEN")
    ]
    monkeypatch.setenv("NODEKILN_SECRET_NAAVRE_VLAB_OPENLAB_CELL_GITHUB_TOKEN", "ghp_example")
    plan = build_plan(load_site(site_file))
    assert plan.missing_secrets == []
    assert "ghp_example" in plan.files["naavre.root-values.yaml"][0].decode()


def test_builtin_off_and_extra_release_ordered_after_its_dependency(site_file):
    (site_file.parent / "charts" / "hello").mkdir(parents=True)
    (site_file.parent / "charts" / "hello" / "Chart.yaml").write_text("apiVersion: v2\nname: hello\nversion: 1.2.3\n")

    def change(doc):
        doc["addons"]["velero"]["enabled"] = False
        doc["addons"]["releases"] = [
            {
                "name": "loki",
                "namespace": "logging",
                "chart": "loki",
                "repo": "https://grafana.github.io/helm-charts",
                "version": "6.30.0",
                "dependsOn": ["hello"],
            },
            {"name": "hello", "namespace": "hello", "chart": "charts/hello", "dependsOn": ["ingress"]},
        ]

    plan = build_plan(load_site(edit(site_file, change)))
    names = [r.name for r in plan.releases]
    assert "velero" not in names
    assert names.index("ingress") < names.index("hello") < names.index("loki")
    assert plan.release("hello").version == "1.2.3" and plan.release("hello").chart_path is not None


def test_values_override_is_merged(site_file):
    (site_file.parent / "traefik-extra.yaml").write_text(
        "deployment:\n  replicas: 5\nlogs:\n  general: {level: DEBUG}\n"
    )
    plan = build_plan(load_site(edit(site_file, lambda d: d["addons"]["ingress"].update(values="traefik-extra.yaml"))))
    values = yaml.safe_load(plan.files["ingress.values.yaml"][0])
    assert values["deployment"] == {"kind": "Deployment", "replicas": 5}
    assert values["logs"]["general"]["level"] == "DEBUG"
    assert values["providers"]["kubernetesIngressNGINX"]["enabled"] is True


# --- bad input: each a site-file error naming the field ------------------------------------


def test_nfs_on_without_server(site_file):
    found = problems(edit(site_file, lambda d: d["addons"]["nfs"].pop("server")))
    assert any(p.startswith("addons.nfs.server: required when NFS is on") for p in found), found


def test_cni_pool_differs_from_pod_subnet(site_file):
    found = problems(edit(site_file, lambda d: d["addons"]["calico"].update(ipPool="10.244.0.0/16")))
    assert any(
        p.startswith("addons.calico.ipPool: 10.244.0.0/16 differs from kubernetes.podSubnet 192.168.0.0/16")
        for p in found
    ), found


def test_unknown_addon_name(site_file):
    found = problems(edit(site_file, lambda d: d["addons"].update(certmanager={"enabled": True})))
    assert any(p.startswith("addons.certmanager: unknown field") for p in found), found


def test_unknown_dependency_of_extra_release(site_file):
    def change(doc):
        doc["addons"]["releases"] = [
            {
                "name": "x",
                "namespace": "x",
                "chart": "x",
                "repo": "https://example.org/charts",
                "version": "1.0.0",
                "dependsOn": ["kyverno"],
            }
        ]

    found = problems(edit(site_file, change))
    assert any(p.startswith("addons.releases[0].dependsOn[0]: unknown addon or release 'kyverno'") for p in found), (
        found
    )


def test_dependency_cycle(site_file):
    def change(doc):
        doc["addons"]["releases"] = [
            {
                "name": "a",
                "namespace": "x",
                "chart": "a",
                "repo": "https://example.org/charts",
                "version": "1",
                "dependsOn": ["b"],
            },
            {
                "name": "b",
                "namespace": "x",
                "chart": "b",
                "repo": "https://example.org/charts",
                "version": "1",
                "dependsOn": ["a"],
            },
        ]

    found = problems(edit(site_file, change))
    assert any(p.startswith("addons.releases[0].dependsOn: dependencies form a circle: a -> b -> a") for p in found), (
        found
    )


def test_values_override_that_does_not_parse(site_file):
    (site_file.parent / "broken.yaml").write_text("replicas: [1, 2\n")
    found = problems(edit(site_file, lambda d: d["addons"]["minio"].update(values="broken.yaml")))
    assert any(p.startswith("addons.minio.values: values file") and "does not parse" in p for p in found), found


def test_errors_carry_the_line(site_file):
    edit(site_file, lambda d: d["addons"]["nfs"].pop("server"))
    with pytest.raises(SiteError) as info:
        load_site(site_file)
    (problem,) = [p for p in info.value.problems if p.path == "addons.nfs.server"]
    lines = site_file.read_text().splitlines()
    assert "nfs:" in lines[problem.line - 1]


def test_velero_on_minio_needs_minio(site_file):
    found = problems(edit(site_file, lambda d: d["addons"]["minio"].update(enabled=False)))
    assert any(p.startswith("addons.velero.s3: minio, but addons.minio is off") for p in found), found


def test_nodeport_ingress_needs_open_node_ports(site_file):
    def no_edge(d):
        d.pop("edge")
        d["addons"]["ingress"].update(serviceType="NodePort")

    found = problems(edit(site_file, no_edge))
    assert any(p.startswith("addons.ingress.serviceType: NodePort, but firewall.nodePorts is false") for p in found), (
        found
    )
    # with an edge section (the example's) the workers open the NodePorts to the edge nodes: test_edge.py


def test_order_is_stable_and_finds_cycles():
    assert order({"a": [], "b": ["c"], "c": [], "d": ["a", "off"]}) == ["a", "c", "b", "d"]
    with pytest.raises(CycleError) as info:
        order({"a": ["c"], "b": [], "c": ["d"], "d": ["a"]})
    assert info.value.cycle == ["a", "c", "d", "a"]


# --- NaaVRE (NaaVRE-helm d63c11a) ------------------------------------------------------------


def test_naavre_lab_image_needs_a_tag(site_file):
    found = problems(
        edit(site_file, lambda d: d["addons"]["naavre"]["virtualLabs"]["openlab"].update(image="ghcr.io/x/lab"))
    )
    assert any(
        p.startswith("addons.naavre.virtualLabs.openlab.image: 'ghcr.io/x/lab': expected name:tag") for p in found
    ), found


def test_naavre_lab_needs_a_description(site_file):
    # the values chart's check-required-values.yaml fails on an empty one
    found = problems(edit(site_file, lambda d: d["addons"]["naavre"]["virtualLabs"]["openlab"].pop("description")))
    assert any(p.startswith("addons.naavre.virtualLabs.openlab.description:") for p in found), found


@pytest.mark.parametrize(
    "where, path",
    [
        (("virtualLabs", "openlab"), "addons.naavre.virtualLabs.openlab.binderRef"),
        ((), "addons.naavre.binderhub"),
        (("users", 0), "addons.naavre.users[0].email"),
    ],
)
def test_naavre_settings_removed_upstream_are_rejected(site_file, where, path):
    # BinderHub and binder_ref left NaaVRE-helm; its realm import takes only username/password
    def change(doc):
        node = doc["addons"]["naavre"]
        for key in where:
            node = node[key]
        node[path.rsplit(".", 1)[-1]] = "x"

    found = problems(edit(site_file, change))
    assert any(p.startswith(f"{path}: unknown field") for p in found), found


def test_naavre_root_values_lab_and_tls(site_file):
    plan = build_plan(load_site(site_file))
    values = yaml.safe_load(plan.files["naavre.root-values.yaml"][0])
    lab = values["jupyterhub"]["vlabs"]["openlab"]
    assert lab["image"] == {"name": "ghcr.io/naavre/flavors/naavre-fl-vanilla-jupyter", "tag": "v0.3.16"}
    assert lab["configuration"]["base_image_tags_url"].endswith("/download/v0.3.16/base_image_tags.json")
    assert lab["dirname"] == "Open Lab"
    # the certificates addon is on: every Ingress names its ClusterIssuer and has tls
    assert values["global"]["ingress"]["tls"] == {"enabled": True}
    assert values["global"]["ingress"]["commonAnnotations"] == {
        "cert-manager.io/cluster-issuer": "letsencrypt-production"
    }
    assert values["global"]["secrets"]["keycloak"]["users"][0].keys() == {"username", "password"}
    # without it: no tls and no cert-manager annotation (the edge terminates TLS)
    off = yaml.safe_load(
        build_plan(load_site(edit(site_file, lambda d: d["addons"]["certificates"].update(enabled=False)))).files[
            "naavre.root-values.yaml"
        ][0]
    )
    assert off["global"]["ingress"]["tls"] == {"enabled": False}
    assert off["global"]["ingress"]["commonAnnotations"] == {}
