"""The layout ARCHITECTURE.md describes, held by the imports: the site model imports no stage,
and the shipped package imports none of the scaffolding that is not shipped."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "nodekiln"
STAGES = ("nodekiln.addons", "nodekiln.bootstrap", "nodekiln.images", "nodekiln.openstack")
NOT_SHIPPED = ("testing", "bench", "tests", "tasks")


def _imports(module: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_the_site_model_imports_no_stage() -> None:
    for module in sorted((PACKAGE / "config").glob("*.py")):
        into_stages = {name for name in _imports(module) if name.startswith(STAGES)}
        assert not into_stages, f"{module.name} imports {into_stages}"


def test_the_package_imports_nothing_that_is_not_shipped() -> None:
    for module in sorted(PACKAGE.rglob("*.py")):
        outside = {name for name in _imports(module) if name.split(".")[0] in NOT_SHIPPED}
        assert not outside, f"{module.relative_to(PACKAGE)} imports {outside}"


def test_every_stage_is_a_package_beside_its_assets() -> None:
    for stage in ("addons", "bootstrap", "images"):
        assert (PACKAGE / stage / "__init__.py").is_file() and (PACKAGE.parent / stage).is_dir(), stage
    assert not (PACKAGE.parent / "cloudinit").exists()  # cloud-init's templates are bootstrap's
