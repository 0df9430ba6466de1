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
from nodekiln.errors import ToolError
from nodekiln.files import write_atomic

RENDERED = ".rendered"  # NaaVRE's sub-chart values, rendered from its root values file


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


def values_files(plan: Plan, release: Release, helm: Helm) -> list[Path]:
    """The --values files of a release: its values file, or what its values chart renders."""
    own = plan.values_path(release)
    if release.values_chart is None:
        return [own]
    if not release.values_chart.is_dir() or release.chart_path is None or not release.chart_path.is_dir():
        src = release.source or {}
        raise AddonsError(
            f"{release.name}: no chart checkout at {release.values_chart.parent}: "
            f"git clone {src.get('git', '')} {release.values_chart.parent} && git -C {release.values_chart.parent} checkout {src.get('ref', '')} "
            f"&& helm dependency build {release.chart_path}"
        )
    assert plan.out is not None
    return helm.render_values_chart(
        release.name, release.values_chart, own, release.namespace, plan.out / RENDERED / release.name
    )


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
                helm.upgrade(
                    release.name,
                    release.chart_ref,
                    release.namespace,
                    files,
                    version=release.version,
                    repo=release.repo,
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


def images(plan: Plan, helm: Helm | None = None) -> tuple[list[str], list[str]]:
    """Every container image the plan runs, and notes on releases whose images are unknown.

    Built-ins declare theirs (pinned in addons/<name>.yaml and set in their values). Releases
    from a local chart (the site's own, NaaVRE's checkout) are rendered with `helm template`
    when helm and the chart are there, and their `image:` fields read.
    """
    found = set(plan.images())
    notes: list[str] = []
    for release in plan.releases:
        if release.chart_path is None:
            if not release.builtin:
                notes.append(
                    f"{release.name}: chart {release.chart} from {release.repo}: images not known without the chart (render it on a connected host)"
                )
            continue
        if helm is None or not release.chart_path.is_dir():
            notes.append(
                f"{release.name}: chart {release.chart_path} is not there (or helm is missing): its sub-charts' images are not listed"
            )
            continue
        files = values_files(plan, release, helm)
        text = helm.template(release.name, str(release.chart_path), release.namespace, files)
        found.update(_images_in(text))
    return sorted(found), notes


def _images_in(manifests: str) -> set[str]:
    out: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "image" and isinstance(value, str) and value:
                    out.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for doc in yaml.safe_load_all(manifests):
        walk(doc)
    return out
