"""Fixtures shared by every test layer."""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "sites" / "example" / "site.yaml"


@pytest.fixture
def example_site(tmp_path: Path) -> Path:
    """A private copy of the example site (secrets get written beside it)."""
    target = tmp_path / "site" / "site.yaml"
    target.parent.mkdir()
    shutil.copy(EXAMPLE, target)
    return target


@pytest.fixture
def example_doc() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


@pytest.fixture
def site_file(tmp_path: Path, example_doc: dict[str, Any]) -> Callable[..., Path]:
    """Write a variant of the example site: site_file(lambda doc: ...) -> path."""
    counter = iter(range(10_000))

    def make(change: Callable[[dict[str, Any]], Any] | None = None, text: str | None = None) -> Path:
        path = tmp_path / f"variant{next(counter)}" / "site.yaml"
        path.parent.mkdir()
        if text is None:
            doc = copy.deepcopy(example_doc)
            if change is not None:
                change(doc)
            text = yaml.safe_dump(doc, sort_keys=False)
        path.write_text(text)
        return path

    return make


def _single(doc: dict[str, Any]) -> None:
    doc["controlPlane"] = {"loadBalancer": "none"}
    doc["nodes"] = [doc["nodes"][0], doc["nodes"][3]]


def _five(doc: dict[str, Any]) -> None:
    doc.setdefault("firewall", {})["apiFrom"] = ["192.0.2.0/24", "198.51.100.7/32"]  # operators' networks
    doc["nodes"][3:3] = [
        {"name": "master04", "role": "control-plane", "address": "10.0.1.36"},
        {"name": "master05", "role": "control-plane", "address": "10.0.1.37"},
    ]


def _host_services(doc: dict[str, Any]) -> None:
    doc["controlPlane"]["loadBalancerMode"] = "host-services"


SITE_VARIANTS: dict[str, Callable[[dict[str, Any]], None] | None] = {
    "talk-3cp-3w": None,  # the example: the talk's addresses, 3 control planes, 3 workers
    "single-node": _single,
    "five-cp": _five,
    "host-services": _host_services,
}


@pytest.fixture(params=sorted(SITE_VARIANTS))
def variant_site(request, site_file):
    """Each fixture site in turn, with its secrets: (Site, Secrets)."""
    from nodekiln.config.site import load_site
    from nodekiln.secrets import SecretStore

    site = load_site(site_file(SITE_VARIANTS[request.param]))
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    return site, secrets


def pytest_collection_modifyitems(config, items):
    """Tests marked kvm_only run where KVM works, or everywhere with NODEKILN_TEST_ALL=1
    (`invoke test --all`); elsewhere they are deselected, and the summary says so."""
    kvm_only = [item for item in items if item.get_closest_marker("kvm_only")]
    if not kvm_only or os.environ.get("NODEKILN_TEST_ALL") == "1":
        return
    from testing.qemu import accelerator

    if accelerator() == "kvm":
        return
    config.hook.pytest_deselected(items=kvm_only)
    items[:] = [item for item in items if not item.get_closest_marker("kvm_only")]
    config._nodekiln_kvm_only = len(kvm_only)


def pytest_terminal_summary(terminalreporter, config):
    count = getattr(config, "_nodekiln_kvm_only", 0)
    if count:
        terminalreporter.write_line(
            f"nodekiln: {count} kvm_only tests (the real Packer build, ~40 min under TCG) were deselected: "
            "KVM does not work on this machine; run them with `invoke test --all`",
            yellow=True,
        )
