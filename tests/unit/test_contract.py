"""The upstream contract (nodekiln.contract) and what nodekiln renders and bakes against it.

Each test names the upstream fact it relies on; the references live in nodekiln.contract."""

from __future__ import annotations

import pytest
import yaml

from nodekiln import contract
from nodekiln.addons.plan import build_plan
from nodekiln.bootstrap.render import kubeadm_config
from nodekiln.config.site import load_site
from nodekiln.errors import SiteError
from nodekiln.images import dib
from nodekiln.secrets import generate

# What the image itself provides outside the writable places (checked on the booted image by
# tests/image/test_node_image.py::test_upstream_host_paths_exist_or_are_writable).
IN_IMAGE = {"/lib/modules", "/usr/share/ca-certificates"}


def documents(text: str) -> dict:
    return {d["kind"]: d for d in yaml.safe_load_all(text) if d}


@pytest.fixture
def init_docs(example_site):
    site = load_site(example_site)
    return site, documents(kubeadm_config(site, generate(), site.init_node))


def test_every_host_path_is_writable_or_in_the_image(init_docs):
    """kubeadm mounts kube-controller-manager's flexvolume dir read-write as DirectoryOrCreate
    (kubernetes/kubernetes cmd/kubeadm/app/phases/controlplane/volumes.go,
    getHostPathVolumesForTheControlPlane): under the read-only /usr the kubelet cannot create it
    and the pod never starts. Same for the kubelet's volumePluginDir and etcd's data dir."""
    site, docs = init_docs
    calico = yaml.safe_load(build_plan(site).files["calico.values.yaml"][0])["installation"]
    paths = [
        *contract.control_plane_host_paths(docs["ClusterConfiguration"], existing=["/usr/share/ca-certificates"]),
        *contract.kubelet_host_paths(docs["KubeletConfiguration"]),
        *contract.calico_host_paths(calico),
    ]
    bad = [
        p for p in paths if not contract.LAYOUT.is_writable(p.path) and not (p.need == "exists" and p.path in IN_IMAGE)
    ]
    assert bad == []
    flex = [p.path for p in paths if "flexvolume" in p.component or "volumePluginDir" in p.component]
    assert flex == [contract.FLEX_VOLUME_DIR, contract.FLEX_VOLUME_DIR]  # the kubelet and kcm agree


def test_upstream_defaults_would_not_be(init_docs):
    """The check above can fail: kubeadm's and the operator's defaults lie under /usr."""
    _, _docs = init_docs
    defaults = [
        *contract.control_plane_host_paths({}),
        *contract.kubelet_host_paths({}),
        *contract.calico_host_paths({}),
    ]
    assert {p.path for p in defaults if not contract.LAYOUT.is_writable(p.path)} >= {
        contract.UPSTREAM_FLEX_VOLUME_DIR,
        f"{contract.UPSTREAM_FLEX_VOLUME_DIR}/nodeagent~uds",
    }


def test_calico_has_no_flexvol_driver(example_site):
    """tigera/operator pkg/controller/installation/core_controller.go (fillDefaults) defaults
    flexVolumePath to /usr/libexec/kubernetes/kubelet-plugins/volume/exec/ for kubeadm clusters and
    pkg/render/node.go adds the flexvol-driver init container unless it is "None"."""
    site = load_site(example_site)
    plan = build_plan(site)
    assert yaml.safe_load(plan.files["calico.values.yaml"][0])["installation"]["flexVolumePath"] == "None"
    pulled = [image for release in plan.releases for image in (*release.images, *release.operator_images)]
    assert any("calico/node:" in image for image in pulled)
    assert not any("pod2daemon-flexvol" in image for image in pulled)


def test_no_preflight_check_is_ignored(variant_site):
    """kubeadm's init checks the four manifests it writes, not the folder (kubernetes#57287), and
    join has no folder check since 1.23 (kubernetes#104942); ValidateIgnorePreflightErrors refuses
    `all` beside named checks, so a named one in the configuration breaks every `all`."""
    site, secrets = variant_site
    for node in site.nodes:
        for doc in documents(kubeadm_config(site, secrets, node)).values():
            assert "ignorePreflightErrors" not in doc.get("nodeRegistration", {}), node.name
    preplaced = {"/etc/kubernetes/manifests/keepalived.yaml", "/etc/kubernetes/manifests/haproxy.yaml"}
    assert not {c.target for c in contract.PREFLIGHT_CHECKS} & preplaced


def test_ignore_list_rule():
    assert contract.check_ignore_list(["all"], []) == ["all"]
    assert contract.check_ignore_list(["Swap"], ["NumCPU"]) == ["numcpu", "swap"]
    assert "don't specify individual checks if 'all' is used" in contract.check_ignore_list(
        ["all"], ["DirAvailable--etc-kubernetes-manifests"]
    )


@pytest.mark.parametrize(
    "version, tag",
    [("1.31.4", "3.10"), ("1.32.0", "3.10"), ("1.33.1", "3.10"), ("1.34.2", "3.10.1"), ("1.35.0", "3.10.1")],
)
def test_sandbox_image_follows_the_minor(site_file, tmp_path, version, tag):
    """kubeadm's PauseVersion (cmd/kubeadm/app/constants/constants.go): the sandbox image its
    preflight pulls and expects of the runtime; an air-gapped node without it fails preflight."""

    def sandbox(site) -> str:
        stage = tmp_path / "stage"
        dib.write_stage(stage, site.image, site.kubernetes.version, site.directory)
        env = dict(line.split("=", 1) for line in (stage / "env").read_text().splitlines())
        return env["NODEKILN_SANDBOX_IMAGE"]

    assert (
        sandbox(load_site(site_file(lambda d: d["kubernetes"].update(version=version))))
        == f"registry.k8s.io/pause:{tag}"
    )
    mirrored = site_file(
        lambda d: (
            d["kubernetes"].update(version=version),
            d["image"].update(containerd={"sandboxImage": "mirror.example/pause:3.10"}),
        )
    )
    assert sandbox(load_site(mirrored)) == "mirror.example/pause:3.10"


@pytest.mark.parametrize(
    "key",
    ["node-role.kubernetes.io/worker", "kubernetes.io/role", "example.k8s.io/x", "node-restriction.kubernetes.io/a"],
)
def test_labels_the_kubelet_refuses_are_site_errors(site_file, key):
    """cmd/kubelet/app/options/options.go ValidateKubeletFlags: --node-labels in kubernetes.io or
    k8s.io (or a subdomain) outside the kubelet's own set make the kubelet exit at start."""
    path = site_file(lambda d: d["nodes"][3].update(labels={key: "yes"}))
    with pytest.raises(SiteError) as err:
        load_site(path)
    text = str(err.value)
    assert "nodes[3].labels" in text and key in text and f"{path}:" in text


@pytest.mark.parametrize(
    "key",
    [
        "tier",
        "example.org/tier",
        "node.kubernetes.io/pool",
        "a.node.kubernetes.io/b",
        "kubelet.kubernetes.io/x",
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    ],
)
def test_labels_the_kubelet_accepts(site_file, key):
    """staging/src/k8s.io/kubelet/pkg/apis/well_known_labels.go: kubeletLabels, kubeletLabelNamespaces."""
    load_site(site_file(lambda d: d["nodes"][3].update(labels={key: "yes"})))


def test_phases_per_minor():
    """join's etcd member moved to the etcd-join phase with ControlPlaneKubeletLocalMode (on from 1.33)."""
    assert "etcd-join" not in [p.name for p in contract.phases("control-plane", 32)]
    assert [p.name for p in contract.phases("control-plane", 33)][3:6] == [
        "kubelet-start",
        "etcd-join",
        "kubelet-wait-bootstrap",
    ]
    assert contract.rerun_skip_phases("init", 31) == ["preflight"]
    assert [(s.phase, s.marker) for s in contract.rerun_skip_when_done("worker", 35)] == [
        ("kubelet-start", contract.KUBELET_CONF)
    ]
    assert contract.INSTANCE_CONFIG in contract.done_markers(
        "worker", 34
    ) and contract.INSTANCE_CONFIG not in contract.done_markers("worker", 33)
    for minor in contract.SUPPORTED_MINORS:
        assert contract.KUBELET_CONF in contract.done_markers("worker", minor)
        assert contract.ETCD_MANIFEST in contract.done_markers("control-plane", minor)
