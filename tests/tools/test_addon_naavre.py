"""NaaVRE with the real NaaVRE-helm charts at d63c11a (tests/charts/upstream/naavre-helm-d63c11a):
nodekiln's root values -> the `values` chart's ten values files -> the `naavre` umbrella chart."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodekiln.addons.helm import Helm
from testing import charts
from tests.tools.conftest import RenderedSite, helm_binary, render_site

pytestmark = pytest.mark.tools

ADDONS = charts.REPO / "addons"

# One file per template of values/templates/ (check-required-values.yaml prints nothing).
VALUES_FILES = {
    "global.yaml",
    "argo-workflows.yaml",
    "jupyterhub.yaml",
    "k8s-secret-creator.yaml",
    "keycloak-db.yaml",
    "seaweedfs.yaml",
    "naavre-catalogue-service.yaml",
    "naavre-containerizer-service.yaml",
    "naavre-workflow-service.yaml",
    "naavre-paas-frontend.yaml",
}


def _chart_file(name: str) -> Any:
    """A file of the values chart package, parsed: values/<name>."""
    with tarfile.open(charts.NAAVRE_HELM / "values-0.1.0.tgz") as tar:
        member = tar.extractfile(f"values/{name}")
        assert member is not None
        return yaml.safe_load(member.read())


def _root_values(rendered: RenderedSite) -> Path:
    return rendered.plan.values_path(rendered.plan.release("naavre"))


def _written(rendered: RenderedSite) -> list[Path]:
    from nodekiln.addons.render import RENDERED

    return sorted((rendered.plan.out / RENDERED / "naavre").glob("*.yaml"))


def test_values_chart_writes_its_ten_files_0600(example_render):
    files = _written(example_render)
    assert {f.name for f in files} == VALUES_FILES
    assert all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    assert (files[0].parent.stat().st_mode & 0o777) == 0o700


# A map the chart passes on whole (`toYaml`), so any key in it is read.
FREE_FORM = object()


def _unread(written: Any, reads: Any, path: str, maps: dict[str, Any]) -> list[str]:
    """Keys of `written` with no counterpart in `reads` (the values chart's values.yaml)."""
    if path in maps and maps[path] is FREE_FORM:
        return []
    if path in maps:  # a map of the site's own names (labs): each entry against the model
        return [p for key, value in written.items() for p in _unread(value, maps[path], f"{path}.*", maps)]
    if isinstance(written, dict):
        if not isinstance(reads, dict):
            return [path]
        found = []
        for key, value in written.items():
            if key not in reads:
                found.append(f"{path}.{key}".lstrip("."))
            else:
                found.extend(_unread(value, reads[key], f"{path}.{key}".lstrip("."), maps))
        return found
    if isinstance(written, list) and written and isinstance(written[0], dict):
        model = reads[0] if isinstance(reads, list) and reads else maps.get(f"{path}[]")
        return [p for item in written for p in _unread(item, model, f"{path}[]", maps)]
    return []


def test_every_root_value_nodekiln_writes_is_read_by_the_values_chart(example_render):
    written = yaml.safe_load(_root_values(example_render).read_text())
    chart = _chart_file("values.yaml")
    example = _chart_file("values-example-basic.yaml")
    maps = {
        # a lab: the chart's own `openlab` is the model of every lab
        "jupyterhub.vlabs": chart["jupyterhub"]["vlabs"]["openlab"],
        # users: [] in values.yaml; the bundled example shows an entry (username, password)
        "global.secrets.keycloak.users[]": example["global"]["secrets"]["keycloak"]["users"][0],
        # templates/global.yaml: `commonAnnotations: {{- .Values.global.ingress.commonAnnotations | toYaml }}`
        "global.ingress.commonAnnotations": FREE_FORM,
    }
    assert _unread(written, chart, "", maps) == []
    # and the check finds a key the chart does not read
    assert _unread({"jupyterhub": {"binderhub": {"enabled": True}}}, chart, "", maps) == ["jupyterhub.binderhub"]
    assert _unread({"jupyterhub": {"vlabs": {"x": {"binder_ref": "r"}}}}, chart, "", maps) == [
        "jupyterhub.vlabs.*.binder_ref"
    ]


def test_required_values_check_of_the_real_chart(example_render, tmp_path):
    helm = Helm(helm_binary())
    chart = example_render.plan.release("naavre").values_chart
    root = yaml.safe_load(_root_values(example_render).read_text())
    # nodekiln's root values pass check-required-values.yaml ...
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(root))
    assert helm.template("naavre", str(chart), "naavre", [good])
    # ... and one required key left out fails with the chart's message
    del root["global"]["secrets"]["seaweedfs"]["argoBucket"]["access_key"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(root))
    with pytest.raises(Exception) as info:
        helm.template("naavre", str(chart), "naavre", [bad])
    assert "Value required for key: .global.secrets.seaweedfs.argoBucket access_key" in str(info.value)


def _hub_config(naavre: Any) -> dict[str, Any]:
    """z2jh keeps the hub's values in the hub Secret's values.yaml (templates/hub/secret.yaml)."""
    import base64

    (secret,) = [s for s in naavre.of_kind("Secret") if s["metadata"]["name"] == "naavre-jupyter-hub"]
    data = secret.get("stringData") or {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    return yaml.safe_load(data["values.yaml"])


def test_umbrella_renders_with_them(example_render):
    site = example_render.site
    naavre = example_render.releases["naavre"]
    domain, s3 = site.addons.naavre.domain, f"s3.{site.addons.naavre.domain}"
    assert example_render.problems() == []
    assert "naavre-jupyter-hub" in {d["metadata"]["name"] for d in naavre.of_kind("Deployment")}
    (keycloak,) = naavre.of_kind("Keycloak")
    assert keycloak["spec"]["hostname"]["hostname"] == f"https://{domain}/auth/"
    assert keycloak["spec"]["image"] == "quay.io/keycloak/keycloak:26.4.2"
    ingresses = naavre.of_kind("Ingress")
    assert len(ingresses) >= 8
    for ingress in ingresses:
        assert ingress["spec"]["ingressClassName"] == "nginx", ingress["metadata"]["name"]
        assert {r["host"] for r in ingress["spec"]["rules"]} <= {domain, s3}, ingress["metadata"]["name"]
    profiles = _hub_config(naavre)["singleuser"]["profileList"]
    assert {p["display_name"] for p in profiles} == set(site.addons.naavre.virtualLabs)
    for profile in profiles:
        lab = site.addons.naavre.virtualLabs[profile["display_name"]]
        default = yaml.safe_load((ADDONS / "naavre.yaml").read_text())["images"]["vanillaJupyter"]
        assert profile["kubespawner_override"]["image"] == (lab.image or default)


def test_pinned_images_are_in_the_rendered_objects(example_render):
    definition = yaml.safe_load((ADDONS / "naavre.yaml").read_text())
    found = example_render.releases["naavre"].images
    assert set(definition["images"].values()) <= found
    # the lab images are pre-pulled by z2jh's image pullers, so they are in the manifests
    pullers = [
        d for d in example_render.releases["naavre"].of_kind("DaemonSet") if "image-puller" in d["metadata"]["name"]
    ]
    assert pullers and all(
        definition["images"]["vanillaJupyter"] in {c["image"] for c in d["spec"]["template"]["spec"]["initContainers"]}
        for d in pullers
    )
    # Keycloak runs the image the operator was built for (keycloak-operator 1.7.0: 26.4.2)
    operator = yaml.safe_load((ADDONS / "keycloak-operator.yaml").read_text())
    assert definition["images"]["keycloak"] == operator["operatorImages"]["keycloak"]
    # argoexec is started by the controller from its --executor-image argument, not an image: field
    (controller,) = [
        d
        for d in example_render.releases["naavre"].of_kind("Deployment")
        if "workflow-controller" in d["metadata"]["name"]
    ]
    args = controller["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--executor-image") + 1] == definition["operatorImages"]["argoexec"]
    assert definition["operatorImages"]["argoexec"] not in found
    # ... and `invoke addons --images` lists it with the manifests' images
    from nodekiln.addons.render import images

    listed = images(list(example_render.releases.values()))
    assert {definition["operatorImages"]["argoexec"], *definition["images"].values()} <= set(listed)


def test_certificates_on_annotates_every_ingress_and_turns_tls_on(example_render):
    rendered = example_render  # the example site turns certificates on (letsencrypt-production)
    assert rendered.site.addons.certificates.enabled
    domain = rendered.site.addons.naavre.domain
    secrets = {domain: f"{domain}-tls", f"s3.{domain}": f"s3.{domain}-tls"}
    ingresses = rendered.releases["naavre"].of_kind("Ingress")
    for ingress in ingresses:
        name = ingress["metadata"]["name"]
        assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt-production", name
        for tls in ingress["spec"].get("tls", []):
            assert all(secrets[host] == tls["secretName"] for host in tls["hosts"]), name
    with_tls = {i["metadata"]["name"] for i in ingresses if i["spec"].get("tls")}
    # every Ingress but Keycloak's (naavre/templates/keycloak.yaml writes no tls section)
    assert {i["metadata"]["name"] for i in ingresses} - with_tls == {"naavre-keycloak"}


def test_every_naavre_host_is_served_with_a_certificate_for_it(example_render):
    """Keycloak's Ingress has no tls section, yet it is served over HTTPS with a certificate: Traefik's
    ingress-nginx provider makes a TLS router for every Ingress path (traefik v3.7.9, the newest tag read;
    pkg/provider/kubernetes/ingress-nginx/translator.go: routerKey + "-tls"), and picks the
    certificate by SNI from every Ingress' tls secrets (build.go loadCertificates, one store).
    cert-manager's ingress-shim makes one Certificate per secretName, owned by the first Ingress
    naming it, and leaves it alone for the others (pkg/controller/certificate-shim/sync.go,
    buildCertificates: "not owned by this object"): Ingresses sharing a secret must list the same hosts."""
    ingresses = example_render.releases["naavre"].of_kind("Ingress")
    covered = {host for i in ingresses for tls in i["spec"].get("tls", []) for host in tls["hosts"]}
    served = {rule["host"] for i in ingresses for rule in i["spec"].get("rules", [])}
    assert served and served <= covered, served - covered
    hosts_by_secret: dict[str, set[frozenset[str]]] = {}
    for ingress in ingresses:
        for tls in ingress["spec"].get("tls", []):
            hosts_by_secret.setdefault(tls["secretName"], set()).add(frozenset(tls["hosts"]))
    assert all(len(hosts) == 1 for hosts in hosts_by_secret.values()), hosts_by_secret


def test_a_second_lab_with_its_own_image_reaches_the_hub(tmp_path, monkeypatch):
    lab = {
        "title": "Wadden Sea",
        "description": "Wadden Sea digital twin",
        "image": "ghcr.io/vlic-lab/wadden-lab:1.2.0",
        "cellGithubUrl": "https://github.com/vlic-lab/wadden-cells",
        "registryUrl": "ghcr.io/vlic-lab/wadden-cells",
    }
    monkeypatch.setenv("NODEKILN_SECRET_NAAVRE_VLAB_WADDEN_CELL_GITHUB_TOKEN", "ghp_wadden")
    rendered = render_site(tmp_path, {"naavre": {"virtualLabs": {"wadden": lab}}})
    assert rendered.problems() == []
    naavre = rendered.releases["naavre"]
    profiles = {p["display_name"]: p for p in _hub_config(naavre)["singleuser"]["profileList"]}
    assert set(profiles) == {"openlab", "wadden"}
    assert profiles["wadden"]["kubespawner_override"]["image"] == "ghcr.io/vlic-lab/wadden-lab:1.2.0"
    assert "ghcr.io/vlic-lab/wadden-lab:1.2.0" in naavre.images  # pre-pulled
