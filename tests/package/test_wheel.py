"""The built wheel is nodekiln: installed into a fresh venv, it validates and renders the
example site from a directory that is not the checkout, byte for byte as the checkout renders
it — so every template and asset ships inside the package, and the scaffolding does not."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE, REPO

pytestmark = pytest.mark.slow  # builds a wheel and installs its dependencies into a venv (~1 min)


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (
        f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    )
    return done.stdout


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the venv's bin folder) — a venv without the system's site-packages, where the
    checkout's editable install cannot answer an import."""
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(REPO)], cwd=work)
    wheel = next((work / "dist").glob("nodekiln-*.whl"))
    _run([sys.executable, "-m", "venv", str(work / "venv")], cwd=work)
    bin_dir = work / "venv" / "bin"
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], cwd=work)
    return wheel, bin_dir


def test_the_wheel_carries_the_assets_and_not_the_scaffolding(installed: tuple[Path, Path]) -> None:
    names = zipfile.ZipFile(installed[0]).namelist()
    for asset in (
        "bootstrap/cloudinit/user-data.yaml.j2",
        "bootstrap/bootstrap.sh",
        "images/steps/70-immutable.sh",
        "images/elements/nodekiln-node/element-deps",
        "images/iso/nodekiln",
        "addons/calico.yaml",
    ):
        assert f"nodekiln/_assets/{asset}" in names, asset
    assert not [n for n in names if n.split("/")[0] in ("testing", "bench", "tests")]
    # a bake step that is not executable would be skipped by diskimage-builder's run-parts
    step = zipfile.ZipFile(installed[0]).getinfo(
        "nodekiln/_assets/images/elements/nodekiln-node/install.d/60-nodekiln-steps"
    )
    assert (step.external_attr >> 16) & 0o111


def test_the_installed_command_validates_and_renders_like_the_checkout(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    bin_dir = installed[1]
    elsewhere = tmp_path / "operator"
    (elsewhere / "site").mkdir(parents=True)
    site = elsewhere / "site" / "site.yaml"
    shutil.copy(EXAMPLE, site)

    where = _run(
        [str(bin_dir / "python"), "-c", "import nodekiln.assets as a; print(a.folder('bootstrap'))"], cwd=elsewhere
    )
    assert Path(where.strip()).is_relative_to(bin_dir.parent), where  # the wheel's assets, not the checkout's

    out = _run([str(bin_dir / "nodekiln"), "validate", "--site", str(site)], cwd=elsewhere)
    assert "is valid" in out
    _run(
        [str(bin_dir / "nodekiln"), "render", "--site", str(site), "--out", str(elsewhere / "from-wheel")],
        cwd=elsewhere,
    )
    # the same site (same secrets beside it) rendered by the checkout's code
    _run(
        [
            sys.executable,
            "-c",
            "from nodekiln.tasks import main; main()",
            "render",
            "--site",
            str(site),
            "--out",
            str(elsewhere / "from-checkout"),
        ],
        cwd=REPO,
    )
    wheel_tree, checkout_tree = _tree(elsewhere / "from-wheel"), _tree(elsewhere / "from-checkout")
    assert wheel_tree and any(name.endswith("user-data") for name in wheel_tree)
    assert wheel_tree == checkout_tree
    _, differ, errors = filecmp.cmpfiles(
        elsewhere / "from-wheel", elsewhere / "from-checkout", wheel_tree, shallow=False
    )
    assert not differ and not errors
