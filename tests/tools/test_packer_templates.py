"""`packer validate` of every template, for both builders, with the installed Packer.

qemu: a full validate (the builder checks its settings and the files they name).
openstack: a full validate too: Packer authenticates while preparing the openstack builder, so
it runs against a stub identity endpoint (tests/tools/keystone_stub.py: POST /v3/auth/tokens
only) — the builder's own checks of every argument run for real; no server is created.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nodekiln.errors import ToolError
from nodekiln.images import packer
from tests.tools.conftest import require
from tests.tools.keystone_stub import keystone_stub

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def version() -> packer.PackerVersion:
    require("packer")
    return packer.packer_version()


def test_qemu_template_validates(tmp_path: Path, version: packer.PackerVersion) -> None:
    out = packer.check_templates(tmp_path, "qemu.node", version)
    assert "Error" not in out


def test_openstack_template_validates_against_an_identity_endpoint(
    tmp_path: Path, version: packer.PackerVersion
) -> None:
    with keystone_stub() as env:
        out = packer.check_templates(tmp_path, "openstack.node", version, env=env)
    assert "Error" not in out


def test_every_template_passes_syntax_only(tmp_path: Path, version: packer.PackerVersion) -> None:
    out = packer.check_templates(tmp_path, "", version, syntax_only=True)
    assert "Syntax-only check passed" in out


def test_required_plugins_only_for_packer_1_7_and_later(tmp_path: Path, version: packer.PackerVersion) -> None:
    templates = packer.template_dir(tmp_path, version)
    assert (templates / packer.PLUGINS_FILE.name).exists() == version.needs_plugins
    if not version.needs_plugins:
        # The reason the file lives apart: this Packer rejects the block.
        shutil.copy2(packer.PLUGINS_FILE, templates / packer.PLUGINS_FILE.name)
        with pytest.raises(ToolError):
            packer.validate(templates, only="qemu.node", syntax_only=True)


def test_a_wrong_setting_fails_with_packers_message(tmp_path: Path, version: packer.PackerVersion) -> None:
    packer.check_templates(tmp_path / "ok", "qemu.node", version)
    variables = json.loads((tmp_path / "ok" / "variables.json").read_text())
    variables["accelerator"] = "warp-drive"
    (tmp_path / "ok" / "variables.json").write_text(json.dumps(variables))
    with pytest.raises(ToolError) as caught:
        packer.validate(tmp_path / "ok" / "templates", tmp_path / "ok" / "variables.json", "qemu.node")
    assert "accelerator" in str(caught.value)
