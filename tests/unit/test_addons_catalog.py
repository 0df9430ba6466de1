"""The catalog against the site model and contexts.py: one list of built-ins, checked names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from nodekiln.addons.catalog import FOLDER, builtins
from nodekiln.addons.contexts import CONTEXTS
from nodekiln.config.addons import BUILTIN_KEYS, release_name
from nodekiln.errors import NodekilnError

PACKAGE = Path(__file__).resolve().parents[2] / "nodekiln"


def test_the_catalog_follows_the_site_models_keys():
    defs = builtins()
    assert list(defs) == [release_name(key) for key in BUILTIN_KEYS]
    assert [d.setting for d in defs.values()] == list(BUILTIN_KEYS)


def test_every_context_function_belongs_to_an_addon():
    named = {d.context for d in builtins().values() if d.context}
    assert named == set(CONTEXTS)


def test_the_plan_and_apply_name_no_addon():
    for module in ("plan.py", "apply.py"):
        text = (PACKAGE / "addons" / module).read_text()
        for name in builtins():
            assert f'"{name}"' not in text, (module, name)


def test_the_site_model_does_not_import_the_stage():
    assert "nodekiln.addons" not in (PACKAGE / "config" / "addons.py").read_text()


def copy_with(tmp_path: Path, name: str, change) -> Path:
    folder = tmp_path / "addons"
    shutil.copytree(FOLDER, folder, ignore=shutil.ignore_patterns("tools"))
    doc = yaml.safe_load((folder / f"{name}.yaml").read_text())
    change(doc)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(doc))
    return folder


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        ("minio", lambda d: d.update(context="s3"), "context 's3' is not a function of nodekiln/addons/contexts.py"),
        ("ingress", lambda d: d.update(setting="traefik"), "setting 'traefik' differs from its key addons.ingress"),
        ("nfs", lambda d: d.update(dependsOn=["calico", "mine"]), "dependsOn mine: not built-in addons"),
        (
            "naavre",
            lambda d: d["source"].update(checkoutSetting="charts"),
            "source.checkoutSetting 'charts' is not a setting of addons.naavre",
        ),
    ],
)
def test_inconsistent_definitions_are_rejected(tmp_path, name, change, message):
    folder = copy_with(tmp_path, name, change)
    with pytest.raises(NodekilnError) as info:
        builtins(folder)
    assert str(info.value).startswith(f"{folder / name}.yaml: {message}"), str(info.value)
