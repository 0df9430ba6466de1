"""Invoke tasks of this checkout: every task nodekiln ships (nodekiln/tasks.py, also installed as
the `nodekiln` command) and the developer tasks that need the repository (test, test-image, bench).

Every task takes --site PATH (default: $NODEKILN_SITE, else sites/example/site.yaml).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from invoke import Collection, task
from invoke.exceptions import Exit

from nodekiln import tasks as shipped
from nodekiln.cli import handled, reporter
from nodekiln.tasks import SITE_HELP, _site

REPO = Path(__file__).resolve().parent


def pytest_command(fast: bool = False, k: str | None = None) -> str:
    """The shell command `invoke test` runs: every argument quoted by shlex, so a -k expression
    with quotes or spaces (`not 'slow and x'`) reaches pytest as typed."""
    args = ["python", "-m", "pytest"]
    if fast:
        args += ["-m", "not slow"]
    if k:
        args += ["-k", k]
    return shlex.join(args)


@task(help={**SITE_HELP, "image": "the image to boot and check (a qcow2 from build-image)"})
@handled(
    interrupted="interrupted: the image is unchanged (its VM runs on a copy-on-write overlay); a VM the checks "
    "had booted may outlive them: a qemu-system process, a nodekiln-vm-* folder in the temporary directory"
)
def test_image(c, image, site=None):
    """Boot an image in qemu and run the node checks on it."""
    from testing.check_image import test_image as check

    code = check(Path(image), _site(site))
    if code:
        raise Exit(code=code)


@task(
    help={
        **SITE_HELP,
        "fast": "leave out the slow tests (image builds and boots, services)",
        "k": "only tests matching this pytest expression",
        "all": "also the kvm_only tests where KVM does not work (the real Packer build: ~40 min under TCG)",
    }
)
def test(c, site=None, fast=False, k=None, all=False):
    """Run the test suite; --fast runs the quick tests alone."""
    # helm and other helper tools that .ci/install puts under build/tools/bin
    tools = REPO / "build" / "tools" / "bin"
    env = {"PATH": f"{tools}:{os.environ.get('PATH', '')}"}
    if all:
        env["NODEKILN_TEST_ALL"] = "1"
    c.run(pytest_command(fast, k), pty=False, env=env)


@task(
    help={**SITE_HELP, "only": "run only this figure (repeatable)", "json": "also write the figures to this JSON file"},
    iterable=["only"],
)
@handled(
    interrupted="interrupted: no figures were reported or written; the benchmarks' VMs and services stop as they "
    "unwind, but one cut short may leave a nodekiln-bench-* folder in the temporary directory"
)
def bench(c, site=None, only=None, json=None):
    """Measure the project's figures against their goals."""
    from bench import figures as benchmarks
    from bench.figures import figure_details, figures_table

    figures = benchmarks.run(only or None)
    report = reporter()
    report.show(figures_table(figures))
    details = figure_details(figures)
    if details:
        report.say(details)
    if json:
        benchmarks.write_json(figures, Path(json))


LINT_PATHS = ("nodekiln", "testing", "bench", "tests", "tasks.py")


@task
def lint(c):
    """ruff (lint and format) on the code, mypy (strict) on the package: pyproject.toml says how."""
    c.run(shlex.join(["ruff", "check", *LINT_PATHS]), pty=False)
    c.run(shlex.join(["ruff", "format", "--check", *LINT_PATHS]), pty=False)
    c.run("mypy", pty=False)


ns = Collection.from_module(shipped)
for developer_task in (test, test_image, bench, lint):
    ns.add_task(developer_task)
