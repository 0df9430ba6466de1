"""Install the plan: one `helm upgrade --install --wait --atomic` at a time, in order.

Idempotent: a release whose deployed chart version and user-supplied values (`helm list`,
`helm get values`) equal the plan's is skipped, so a rerun with nothing changed changes nothing.
Resumable: a failed release is rolled back by --atomic and recorded; the next run skips the
releases before it (they are unchanged) and starts again at it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from nodekiln.addons.helm import Helm
from nodekiln.addons.plan import AddonsError, Plan, Release, load_values
from nodekiln.addons.render import values_files
from nodekiln.errors import ToolError
from nodekiln.files import write_atomic


@dataclass(frozen=True)
class Outcome:
    name: str
    action: str  # unchanged | installed | upgraded
    seconds: float


def chart_id(release: Release) -> str:
    """What `helm list` shows in its chart column: <chart name>-<version>."""
    name = release.chart
    if release.chart_path is not None:
        try:
            meta = yaml.safe_load((release.chart_path / "Chart.yaml").read_text(encoding="utf-8"))
            name = meta.get("name", name)
        except (OSError, yaml.YAMLError, AttributeError):
            pass
    return f"{Path(name).name}-{release.version}"


def state_path(plan: Plan) -> Path:
    assert plan.out is not None
    return plan.out.with_name(f"{plan.out.name}.state.json")


def apply(plan: Plan, helm: Helm, console: Console | None = None) -> list[Outcome]:
    """Bring the cluster to the plan, release by release. Raises AddonsError at the first failure."""
    console = console or Console(stderr=True, highlight=False)
    if plan.out is None:
        raise AddonsError("write the plan first (write_plan)")
    if plan.missing_secrets:
        lines = "\n".join(f"  {env}=...   ({name})" for name, env in plan.missing_secrets)
        raise AddonsError(
            f"{len(plan.missing_secrets)} secret(s) only you know are not in the secrets store yet; set them once in the environment and rerun:\n{lines}"
        )
    state = state_path(plan)
    previous = _read_state(state)
    if previous.get("failed") and previous["failed"] in {r.name for r in plan.releases}:
        console.print(f"the last run failed at {previous['failed']}: releases before it that are unchanged are skipped")
    deployed = helm.releases()
    outcomes: list[Outcome] = []
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("addons", total=len(plan.releases))
        for release in plan.releases:
            progress.update(task, description=f"{release.name} ({release.namespace}, {release.label})")
            started = time.monotonic()
            try:
                files = values_files(plan, release, helm)
                desired = load_values(files)
                current = deployed.get((release.namespace, release.name))
                if current is not None and _unchanged(helm, release, current, desired):
                    outcomes.append(Outcome(release.name, "unchanged", time.monotonic() - started))
                    progress.console.print(f"  {release.name}: unchanged ({chart_id(release)})")
                    progress.advance(task)
                    continue
                repo, version = release.pull
                helm.upgrade(
                    release.name,
                    release.chart_ref,
                    release.namespace,
                    files,
                    version=version,
                    repo=repo,
                    timeout=release.timeout,
                )
                for command in release.readiness:
                    helm.kubectl_run(list(command), release.namespace)
            except (ToolError, TimeoutError, AddonsError) as exc:
                write_atomic(
                    state, json.dumps({"failed": release.name, "done": [o.name for o in outcomes]}, indent=2) + "\n"
                )
                done = ", ".join(o.name for o in outcomes) or "none"
                raise AddonsError(
                    f"release {release.name} failed (helm rolled it back); in place before it: {done}.\n"
                    f"Fix the cause and rerun `invoke addons`: it resumes at {release.name}.\n{exc}"
                ) from None
            action = "upgraded" if current is not None else "installed"
            outcomes.append(Outcome(release.name, action, time.monotonic() - started))
            progress.console.print(f"  {release.name}: {action} ({chart_id(release)}, waited for: {release.wait_for})")
            progress.advance(task)
    write_atomic(state, json.dumps({"failed": None, "done": [o.name for o in outcomes]}, indent=2) + "\n")
    return outcomes


def _unchanged(helm: Helm, release: Release, current: dict[str, Any], desired: dict[str, Any]) -> bool:
    if current.get("status") != "deployed" or current.get("chart") != chart_id(release):
        return False
    return helm.values(release.name, release.namespace) == desired


def _read_state(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, json.JSONDecodeError):
        return {}
