"""Benchmarks of the OpenStack stage, against the real local cloud the tests use (devcloud).

The cloud is started once per `invoke bench` run (about 2 min on 2 cores; set NODEKILN_DEVCLOUD
to the clouds.yaml of one kept running to skip that). A 50-node site is deployed, redeployed
and destroyed once; a 1 GiB image is uploaded once, by a child process whose peak RSS is read.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import tempfile
from functools import cache
from pathlib import Path

import yaml

from bench.figures import Figure
from nodekiln import run


@cache
def _cloud():
    from testing import devcloud

    if os.environ.get("NODEKILN_DEVCLOUD"):
        cloud = devcloud.DevCloud.attach(Path(os.environ["NODEKILN_DEVCLOUD"]))
    else:
        cloud = devcloud.DevCloud().start()
        atexit.register(cloud.stop)
    os.environ["OS_CLIENT_CONFIG_FILE"] = str(cloud.clouds_yaml)
    return cloud


def _site_dir(doc: dict) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="nodekiln-bench-os-"))
    atexit.register(lambda: __import__("shutil").rmtree(directory, ignore_errors=True))
    (directory / "site.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return directory / "site.yaml"


OPENSTACK = {
    "cloud": "nodekiln",
    "flavors": {"control-plane": "m1.small", "worker": "m1.small"},
    "waitHealthz": False,
    "parallelism": 8,
    "bootTimeout": 1200,
}


@cache
def _deploy_50() -> dict[str, float]:
    from nodekiln.config.site import load_site
    from nodekiln.openstack.deploy import site_deploy, site_destroy
    from nodekiln.openstack.images import upload_image
    from nodekiln.secrets import SecretStore
    from testing.standin_build import sign_stand_in
    from testing.synthetic import site_document

    cloud = _cloud()
    doc = site_document(50, name="bench50")
    doc["openstack"] = dict(OPENSTACK)
    path = _site_dir(doc)
    image = path.with_name("bench50-0000000000000050.raw")
    image.write_bytes(b"\0" * 2**20)
    manifest = path.with_name("bench50-0000000000000050.manifest.json")
    manifest.write_text(json.dumps({"inputHash": "50" * 32, "inputs": {"kubernetesVersion": "1.31.4"}}))
    site = load_site(path)
    sign_stand_in(site.directory, site.name, image, manifest)  # upload-image verifies it
    conn = cloud.connect("nodekiln")
    doc["openstack"]["image"] = {"name": upload_image(site, image, manifest, conn=conn, progress=False).name}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    site = load_site(path)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    try:
        first = site_deploy(site, secrets, conn=conn, progress=False)
        again = site_deploy(site, secrets, conn=conn, progress=False)
    finally:
        site_destroy(site, conn=conn)
    return {"calls": first.calls.total, "seconds": first.seconds, "rerun_writes": again.calls.writes}


def deploy_50_nodes_calls() -> Figure:
    # Reads, one bulk POST for the ports, a tag PUT each (this Neutron takes no tags in POST),
    # a POST per server and one list per 2 s while waiting.
    return Figure("deploy_50_nodes_calls", _deploy_50()["calls"], "calls", "<= 250")


def deploy_50_nodes_s() -> Figure:
    return Figure("deploy_50_nodes_s", round(_deploy_50()["seconds"], 1), "s", "<= 300")


def redeploy_nochange_writes() -> Figure:
    return Figure("redeploy_nochange_writes", _deploy_50()["rerun_writes"], "calls", "== 0")


UPLOAD_CHILD = """
import json, resource, sys, time
from pathlib import Path
from nodekiln.config.site import load_site
from nodekiln.openstack.images import upload_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
result = upload_image(load_site(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mb": before / 1024, "peak_mb": peak / 1024, "mb_per_s": result.mb_per_s, "bytes": result.bytes, "id": result.image_id}))
"""


@cache
def _upload_1gib() -> dict[str, float]:
    from nodekiln.config.site import load_site
    from testing.standin_build import sign_stand_in
    from testing.synthetic import site_document

    cloud = _cloud()
    doc = site_document(3, name="bench-upload")
    doc["openstack"] = {**OPENSTACK, "image": {"diskFormat": "raw"}}
    path = _site_dir(doc)
    content_hash = os.urandom(32).hex()
    image = path.with_name(f"bench-upload-{content_hash[:16]}.raw")
    with open(image, "wb") as f:
        for _ in range(1024):
            f.write(os.urandom(2**20))
    manifest = path.with_name(f"bench-upload-{content_hash[:16]}.manifest.json")
    manifest.write_text(json.dumps({"inputHash": content_hash, "inputs": {"kubernetesVersion": "1.31.4"}}))
    # signed before the child starts: its peak RSS and time are the upload's (with its verification)
    sign_stand_in(path.parent, "bench-upload", image, manifest)
    script = path.with_name("upload_child.py")
    script.write_text(UPLOAD_CHILD)
    out = run.run([sys.executable, script, path, image, manifest], env=cloud.env).output
    figures = json.loads(out.strip().splitlines()[-1])
    image.unlink()
    conn = cloud.connect("nodekiln")
    conn.image.delete_image(figures["id"], ignore_missing=True)
    del load_site
    return figures


def upload_1gib_peak_rss_mb() -> Figure:
    # Streaming: the peak is the interpreter with openstacksdk loaded, not the file's size.
    return Figure("upload_1gib_peak_rss_mb", round(_upload_1gib()["peak_mb"], 1), "MB", "<= 200")


def upload_1gib_mb_per_s() -> Figure:
    # Goal: 1 GiB in under 30 s, with Glance on the same 2 cores writing and hashing it too
    # (measured 43-56 MB/s while other builds ran).
    return Figure("upload_1gib_mb_per_s", round(_upload_1gib()["mb_per_s"], 1), "MB/s", ">= 35")
