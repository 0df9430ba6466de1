"""upload-image, site-deploy and site-destroy against real OpenStack services (see conftest.py)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import signal
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nodekiln import run
from nodekiln.bootstrap.jointoken import JoinTokenError
from nodekiln.openstack import join, reach
from nodekiln.openstack.cloud import count_calls
from nodekiln.openstack.deploy import CheckError, DeployError, site_deploy, site_destroy, tagged_leftovers
from nodekiln.openstack.images import ImageChecksumError, image_name, upload_image, verify
from nodekiln.openstack.resources import Names
from nodekiln.openstack.userdata import digest, render_user_data
from tests.openstack.conftest import load_with_secrets

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]  # openstacksdk 4.x deprecation notices


def _three_plus_two(doc: dict) -> None:
    doc["nodes"] = [n for n in doc["nodes"] if n["name"] != "worker03"]


# -- upload-image -----------------------------------------------------------------------------


def test_upload_verifies_checksum_then_reuses_by_hash(make_site, build_artifact, user, tmp_path):
    site, _ = load_with_secrets(make_site(image={"visibility": "shared", "firmware": "uefi", "tags": ["lab"]}))
    image, manifest = build_artifact(tmp_path / "build", site.name, site_dir=site.directory, size_mib=8)
    first = upload_image(site, image, manifest, conn=user, progress=True)
    assert not first.reused and first.bytes == image.stat().st_size
    assert first.sha512 == hashlib.sha512(image.read_bytes()).hexdigest()
    stored = user.image.get_image(first.image_id)
    assert stored.status == "active" and stored.hash_algo == "sha512" and stored.hash_value == first.sha512
    assert stored.name == image_name(first.name.removeprefix("nodekiln-")) and stored.disk_format == "qcow2"
    assert stored.visibility == "shared"
    assert {"nodekiln", "kubernetes-1.31.4", "lab"} <= set(stored.tags)
    props = user.image.get(f"/images/{first.image_id}").json()  # as Glance has it: properties are top-level strings
    assert (props["os_distro"], props["os_version"], props["hw_disk_bus"], props["hw_firmware_type"]) == (
        "debian",
        "12",
        "virtio",
        "uefi",
    )
    assert props["nodekiln_kubernetes_version"] == "1.31.4"
    assert props["nodekiln_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    # no bootChain in this manifest: the recipe's default, the signed chain that boots either way
    assert (props["os_secure_boot"], props["hw_machine_type"]) == ("optional", "q35")

    calls = count_calls(user)
    before = calls.writes
    again = upload_image(site, image, manifest, conn=user, progress=False)
    assert again.reused and again.image_id == first.image_id
    assert calls.writes == before, calls.write_calls()


def test_upload_tells_the_cloud_the_artifacts_secure_boot(make_site, build_artifact, user, tmp_path):
    """The manifest's bootChain decides: required and off reach Glance as Nova reads them."""
    site, _ = load_with_secrets(make_site(image={"firmware": "uefi"}))
    for mode, expected in (("required", ("required", "q35")), ("off", ("disabled", None))):
        image, manifest = build_artifact(
            tmp_path / mode, site.name, site_dir=site.directory, size_mib=1, secure_boot=mode
        )
        uploaded = upload_image(site, image, manifest, conn=user, progress=False)
        props = user.image.get(f"/images/{uploaded.image_id}").json()
        assert (props["hw_firmware_type"], props["os_secure_boot"], props.get("hw_machine_type")) == ("uefi", *expected)


def test_interrupted_upload_is_cleaned_up_on_the_next_run(make_site, build_artifact, user, tmp_path):
    """The uploader is killed (SIGKILL) half way: Glance keeps a queued/saving image; the rerun deletes it."""
    site, _ = load_with_secrets(make_site())
    image, manifest = build_artifact(tmp_path / "build", site.name, site_dir=site.directory, size_mib=64, suffix="raw")
    script = tmp_path / "killed_upload.py"
    script.write_text(
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from nodekiln.config.site import load_site\n"
        "from nodekiln.openstack.images import upload_image\n"
        "sent = 0\n"
        "def on_bytes(n):\n"
        "    global sent\n"
        "    sent += n\n"
        "    if sent > 16 * 2**20:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        f"upload_image(load_site({str(site.file)!r}), Path({str(image)!r}), Path({str(manifest)!r}), progress=False, on_bytes=on_bytes)\n"
    )
    # The script's own folder comes first on sys.path: point Python at this checkout.
    result = run.run([sys.executable, script], check=False, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == -signal.SIGKILL, result.output
    name = image_name(__import__("json").loads(manifest.read_text())["inputHash"])
    left = list(user.image.images(name=name))
    assert left and all(i.status in ("queued", "saving") for i in left), [(i.id, i.status) for i in left]

    done = upload_image(site, image, manifest, conn=user, progress=False)
    assert sorted(done.cleaned) == sorted(i.id for i in left)
    assert [i.status for i in user.image.images(name=name)] == ["active"]


def test_checksum_mismatch_is_an_error_and_deletes_the_image(make_site, build_artifact, user, tmp_path):
    site, _ = load_with_secrets(make_site())
    image, manifest = build_artifact(tmp_path / "build", site.name, site_dir=site.directory, size_mib=1)
    uploaded = upload_image(site, image, manifest, conn=user, progress=False)
    stored = user.image.get_image(uploaded.image_id)
    with pytest.raises(ImageChecksumError, match="is not the local file's sha512"):
        verify(user, stored, "0" * 128)
    assert user.image.find_image(uploaded.image_id) is None


def test_raw_is_converted_with_qemu_img_when_the_site_asks(make_site, build_artifact, user, tmp_path):
    site, _ = load_with_secrets(make_site(image={"diskFormat": "raw"}))
    image, manifest = build_artifact(tmp_path / "build", site.name, site_dir=site.directory, size_mib=4)
    uploaded = upload_image(site, image, manifest, conn=user, progress=False)
    stored = user.image.get_image(uploaded.image_id)
    assert stored.disk_format == "raw" and stored.size == 4 * 2**20 == uploaded.bytes


# -- site-deploy ------------------------------------------------------------------------------


def test_site_lifecycle_3_plus_2(make_site, user, admin, boot_image):
    """Dry run, deploy a 3+2 site, rerun (no writes), add a node, remove it (kept, then pruned), destroy."""
    path = make_site(
        _three_plus_two, image={"name": boot_image}, router={"create": True}, externalNetwork="public", floatingIP=True
    )
    site, secrets = load_with_secrets(path)
    names = Names(site)

    dry = site_deploy(site, secrets, dry_run=True, conn=user, progress=False)
    assert dry.calls.writes == 0
    assert {(s.kind, s.action) for s in dry.plan.steps} >= {
        ("network", "create"),
        ("server", "create"),
        ("port", "create"),
        ("floating-ip", "create"),
    }
    assert tagged_leftovers(user, site) == []

    done = site_deploy(site, secrets, conn=user, progress=True)
    assert done.servers == {n.name: "ACTIVE" for n in site.machines}  # the example's two edge nodes too

    # Ports: fixed addresses from the site, the VIP allowed on control planes only.
    ports = {p.name: p for p in user.network.ports(tags=names.tag)}
    vip = str(site.controlPlane.endpoint.vip)
    for node in site.nodes:
        port = ports[names.port(node.name)]
        assert [ip["ip_address"] for ip in port.fixed_ips] == [str(node.address)]
        pairs = [p["ip_address"] for p in port.allowed_address_pairs]
        assert pairs == ([vip] if node.role == "control-plane" else [])
    assert [ip["ip_address"] for ip in ports[names.vip_port].fixed_ips] == [vip]

    # Security groups mirror the node firewall.
    groups = {g.name: g for g in user.network.security_groups(tags=names.tag)}
    cp, worker = groups[names.security_group("control-plane")], groups[names.security_group("worker")]

    def has(group, protocol, lo=None, hi=None, remote_group=None, prefix=None):
        return any(
            r["direction"] == "ingress"
            and r["protocol"] == protocol
            and r["port_range_min"] == lo
            and r["port_range_max"] == (hi or lo)
            and (remote_group is None or r["remote_group_id"] == remote_group)
            and (prefix is None or r["remote_ip_prefix"] == prefix)
            for r in group.security_group_rules
        )

    assert has(cp, "112", remote_group=cp.id)  # VRRP between control planes only
    assert has(cp, "tcp", 7443, prefix=str(site.network.cidr)) and has(cp, "tcp", 6443, prefix=str(site.network.cidr))
    assert has(cp, "tcp", 2379, 2380, remote_group=cp.id) and has(cp, "tcp", 10250, 10259, remote_group=cp.id)
    assert has(worker, "tcp", 10250, prefix=str(site.network.cidr)) and not has(worker, "112")
    assert has(worker, "tcp", 22, prefix="0.0.0.0/0") and has(worker, "tcp", 179, prefix=str(site.network.cidr))

    # Server group with soft anti-affinity holding the control planes; servers with their user-data.
    group = next(g for g in user.compute.server_groups() if g.name == names.server_group)
    assert (group.policy or group.policies[0]) == "soft-anti-affinity"
    servers = {
        s.name: s
        for s in admin.compute.servers(details=True, all_projects=True)
        if (s.metadata or {}).get("nodekiln-site") == site.name
    }
    assert sorted(group.member_ids) == sorted(servers[n.name].id for n in site.control_planes)
    rendered = render_user_data(site, secrets)
    for node in site.machines:
        server = admin.compute.get_server(servers[node.name].id)
        assert server.status == "ACTIVE" and server.has_config_drive in (True, "True")
        assert base64.b64decode(server.user_data) == rendered[node.name]
        assert server.metadata["nodekiln-role"] == node.role
    fips = {f.port_id: f for f in user.network.ips(tags=names.tag)}  # the API endpoint's and the edge's
    assert sorted(fips) == sorted([ports[names.vip_port].id, ports[names.edge_vip_port].id])
    assert fips[ports[names.vip_port].id].fixed_ip_address == vip
    assert fips[ports[names.edge_vip_port].id].fixed_ip_address == str(site.edge_address)

    # Nothing changed: no write call at all.
    again = site_deploy(site, secrets, conn=user, progress=False)
    assert again.calls.writes == 0, again.calls.write_calls()
    assert again.plan.changes == []

    # A node added: its port and server are created, nothing else is touched.
    added = make_site(
        name=site.name, image={"name": boot_image}, router={"create": True}, externalNetwork="public", floatingIP=True
    )
    added_site, _ = load_with_secrets(added)
    result = site_deploy(added_site, secrets, conn=user, progress=False)
    assert [(s.kind, s.name) for s in result.plan.changes] == [("port", names.port("worker03")), ("server", "worker03")]
    assert result.servers["worker03"] == "ACTIVE"

    # Removed again: kept without --prune, deleted with it.
    kept = site_deploy(site, secrets, conn=user, progress=False)
    assert kept.calls.writes == 0
    assert ("server", "worker03", "orphan") in [(s.kind, s.name, s.action) for s in kept.plan.steps]
    pruned = site_deploy(site, secrets, prune=True, conn=user, progress=False)
    assert {(s.kind, s.name, s.action) for s in pruned.plan.changes} == {
        ("server", "worker03", "delete"),
        ("port", names.port("worker03"), "delete"),
    }
    assert "worker03" not in {s.name for s in user.compute.servers()}
    assert names.port("worker03") not in {p.name for p in user.network.ports(tags=names.tag)}

    destroyed = site_destroy(site, conn=user)
    assert any(d.startswith("server ") for d in destroyed.deleted)
    assert tagged_leftovers(user, site) == []
    assert user.network.find_network("public") is not None  # not ours: left alone


def test_a_failure_half_way_is_fixed_by_a_rerun(make_site, user, boot_image):
    """worker02 asks for a flavor that exists but fits no hypervisor: it ends in ERROR, the rest
    is ACTIVE; with the flavor fixed in the site, the rerun replaces that server alone."""
    bad = make_site(_three_plus_two, image={"name": boot_image}, nodeFlavors={"worker02": "m1.huge"})
    site, secrets = load_with_secrets(bad)
    with pytest.raises(DeployError) as failed:
        site_deploy(site, secrets, conn=user, progress=False)
    message = str(failed.value)
    assert "server worker02: ERROR" in message and "m1.huge" in message
    assert message.count("server ") == 1

    fixed, _ = load_with_secrets(make_site(_three_plus_two, name=site.name, image={"name": boot_image}))
    calls = count_calls(user)
    before = calls.writes
    result = site_deploy(fixed, secrets, conn=user, progress=False)
    assert [(s.kind, s.name, s.action) for s in result.plan.changes] == [("server", "worker02", "replace")]
    assert set(result.servers.values()) == {"ACTIVE"}
    assert [m for m, _ in calls.write_calls()[before:] if m != "GET"] == ["DELETE", "POST"]
    site_destroy(fixed, conn=user)
    assert tagged_leftovers(user, fixed) == []


def test_a_node_added_after_the_join_token_expired(make_site, user, admin, boot_image, monkeypatch):
    """The init server is older than kubernetes.bootstrapTokenTTL (the clock moved on 25 h): with
    the API unreachable from here the deploy fails before it creates anything; with it reachable
    the new server boots with a fresh token, while its metadata digest stays the stored token's,
    so the next run sees no drift and writes nothing."""
    site, secrets = load_with_secrets(make_site(_three_plus_two, image={"name": boot_image}))
    site_deploy(site, secrets, conn=user, progress=False)

    def later() -> datetime:  # the clock of a deploy 25 h after the first
        return datetime.now(UTC) + timedelta(hours=25)

    added, _ = load_with_secrets(make_site(name=site.name, image={"name": boot_image}))

    monkeypatch.setattr(reach, "local_networks", list)  # no addresses: not on the site network, and no floating IP
    calls = count_calls(user)
    before = calls.writes
    for dry_run in (True, False):
        with pytest.raises(
            JoinTokenError,
            match=r"worker03 would join the running cluster, but the server of its init node master01 "
            r"was created 25\.\d h ago: .* cannot be reached from here: .* Nothing was created\.",
        ):
            site_deploy(added, secrets, dry_run=dry_run, conn=user, progress=False, now=later)
    assert calls.writes == before, calls.write_calls()[before:]
    assert "worker03" not in {
        s.name for s in user.compute.servers(details=True) if (s.metadata or {}).get("nodekiln-site") == site.name
    }

    # On the site network: the token is created through the API (here a stand-in that returns it).
    monkeypatch.setattr(reach, "local_networks", lambda: [site.network.cidr])
    minted: list[str] = []
    monkeypatch.setattr(
        join,
        "create_join_token",
        lambda s, sec, address, ttl, now: minted.append(address) or "zyxwvu.0123456789abcdef",
    )
    result = site_deploy(added, secrets, conn=user, progress=False, now=later)
    assert minted == [str(site.endpoint_address)] and result.servers["worker03"] == "ACTIVE"
    assert result.join_token == f"a fresh one (valid 24h) for 1 new node, created through https://{site.endpoint}"
    server = next(
        s
        for s in admin.compute.servers(details=True, all_projects=True)
        if s.name == "worker03" and (s.metadata or {}).get("nodekiln-site") == site.name
    )
    booted = base64.b64decode(admin.compute.get_server(server.id).user_data)
    text = (gzip.decompress(booted) if booted[:2] == b"\x1f\x8b" else booted).decode()
    assert "zyxwvu.0123456789abcdef" in text and secrets.bootstrapToken not in text
    assert server.metadata["nodekiln-user-data"] == digest(render_user_data(added, secrets)["worker03"])

    again = site_deploy(added, secrets, conn=user, progress=False, now=later)
    assert again.calls.writes == 0 and again.plan.changes == [] and len(minted) == 1
    # No node's user-data reads as changed by the fresh token. The edge nodes' does differ, for
    # another reason: their HAProxy lists the workers, and worker03 is new (reported, not replaced).
    differs = {(s.kind, s.name): s.detail for s in again.plan.steps if "differs" in s.detail}
    assert set(differs) == {("server", n.name) for n in added.edge_nodes}, differs
    assert all("(user-data)" in detail for detail in differs.values()), differs
    site_destroy(added, conn=user)
    assert tagged_leftovers(user, added) == []


def test_missing_flavor_and_image_are_reported_before_anything_is_created(make_site, user):
    path = make_site(
        flavors={"control-plane": "m1.small", "worker": "m1.nope", "edge": "m1.small"}, image={"name": "no-such-image"}
    )
    site, secrets = load_with_secrets(path)
    calls = count_calls(user)
    with pytest.raises(CheckError) as failed:
        site_deploy(site, secrets, conn=user, progress=False)
    lines = str(failed.value).splitlines()
    assert any("openstack.flavors.worker: flavor 'm1.nope' does not exist" in line for line in lines)
    assert any("image 'no-such-image' is not in Glance" in line for line in lines)
    assert calls.writes == 0
    assert tagged_leftovers(user, site) == []


def test_tasks_site_deploy_dry_run_prints_the_plan(make_site, cloud, boot_image):
    path = make_site(image={"name": boot_image})
    out = run.run(
        ["invoke", "site-deploy", "--dry-run", "--site", str(path)],
        cwd=Path(__file__).resolve().parents[2],
        env={**cloud.env, "COLUMNS": "200"},
    ).output
    assert "would change" in out and "create" in out and "0 write calls" in out


def test_quota_is_checked_before_anything_is_created(make_site, user, admin, boot_image):
    project = admin.identity.find_project("nodekiln")
    admin.compute.update_quota_set(project.id, instances=2)
    try:
        site, secrets = load_with_secrets(make_site(image={"name": boot_image}))
        calls = count_calls(user)
        before = calls.writes
        with pytest.raises(CheckError, match=r"quota: 8 more instances needed, \d+ left of 2"):  # 6 nodes, 2 edge
            site_deploy(site, secrets, conn=user, progress=False)
        assert calls.writes == before
        assert tagged_leftovers(user, site) == []
    finally:
        admin.compute.revert_quota_set(project.id)


def test_task_upload_image_takes_the_newest_build_of_the_site(make_site, build_artifact, cloud, user, tmp_path):
    path = make_site()
    site, _ = load_with_secrets(path)
    build_artifact(tmp_path / "build" / "images", site.name, site_dir=site.directory, size_mib=1)
    time.sleep(0.05)
    _newest, manifest = build_artifact(tmp_path / "build" / "images", site.name, site_dir=site.directory, size_mib=1)
    repo = Path(__file__).resolve().parents[2]
    out = run.run(
        ["invoke", "--search-root", str(repo), "upload-image", "--site", str(path)], cwd=tmp_path, env=cloud.env
    ).output
    name = image_name(__import__("json").loads(manifest.read_text())["inputHash"])
    assert f"uploaded {name}" in out and "sha512 verified" in out
    again = run.run(
        ["invoke", "--search-root", str(repo), "upload-image", "--site", str(path)], cwd=tmp_path, env=cloud.env
    ).output
    assert "already in Glance: nothing uploaded" in again
    assert [i.status for i in user.image.images(name=name)] == ["active"]
