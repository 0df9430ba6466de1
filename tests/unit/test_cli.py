"""nodekiln.cli: what a task prints when it fails, times out or is interrupted, and the
command `invoke test` runs (issue #18)."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path
from types import ModuleType

import pytest
from invoke.exceptions import Exit

from nodekiln.cli import NOTHING_HALF_WRITTEN, handled
from nodekiln.errors import NodekilnError
from nodekiln.run import run
from tasks import pytest_command

REPO = Path(__file__).resolve().parents[2]


def _tasks() -> ModuleType:
    """tasks.py, imported from the repository root (it is not a package module)."""
    spec = importlib.util.spec_from_file_location("nodekiln_tasks_under_test", REPO / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _interrupted() -> None:
    raise KeyboardInterrupt


def test_plain_handled_turns_ctrl_c_into_its_default_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exit) as caught:
        handled(_interrupted)()
    assert caught.value.code == 130
    assert capsys.readouterr().err == NOTHING_HALF_WRITTEN + "\n"


def test_handled_takes_the_task_s_own_interrupt_message(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(Exit) as caught:
        handled(interrupted="interrupted: run it again")(_interrupted)()
    assert caught.value.code == 130
    assert capsys.readouterr().err == "interrupted: run it again\n"


def test_handled_prints_a_nodekiln_error_as_one_message(capsys: pytest.CaptureFixture[str]) -> None:
    def fails() -> None:
        raise NodekilnError("the site file is wrong")

    with pytest.raises(Exit) as caught:
        handled(interrupted="not this")(fails)()
    assert caught.value.code == 2
    assert capsys.readouterr().err == "error: the site file is wrong\n"


def test_a_timed_out_program_is_a_message_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    @handled
    def task() -> None:
        run(["sh", "-c", "echo waiting for nothing; sleep 30"], timeout=1)

    with pytest.raises(Exit) as caught:
        task()
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sh did not finish within 1 s")
    assert "  | waiting for nothing" in err and "Traceback" not in err


def test_site_deploy_says_what_an_interruption_leaves(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import nodekiln.tasks as shipped

    monkeypatch.setattr(shipped, "_site", lambda path: _interrupted())  # Ctrl-C as the task starts
    with pytest.raises(Exit) as caught:
        _tasks().ns["site-deploy"].body(None)
    assert caught.value.code == 130
    err = capsys.readouterr().err
    assert err != NOTHING_HALF_WRITTEN + "\n"
    assert "site-deploy again" in err and "site-destroy" in err


def test_tasks_that_change_more_than_files_have_their_own_interrupt_message() -> None:
    ns = _tasks().ns  # the checkout's collection: the shipped tasks and the developer tasks
    own = ("build_image", "build_iso", "test_image", "upload_image", "site_deploy", "site_destroy", "addons", "bench")
    for name in own:
        assert ns[name.replace("_", "-")].body.interrupted != NOTHING_HALF_WRITTEN, name
    for name in ("validate", "schema", "render", "secrets", "kubeconfig"):  # atomic writes only
        assert ns[name.replace("_", "-")].body.interrupted == NOTHING_HALF_WRITTEN, name


@pytest.mark.parametrize("k", ["not 'x'", 'name and "y"', "a b; rm -rf /", "it's $HOME `x`", None])
@pytest.mark.parametrize("fast", [False, True])
def test_pytest_command_quotes_every_argument(fast: bool, k: str | None) -> None:
    expected = ["python", "-m", "pytest", *(["-m", "not slow"] if fast else []), *(["-k", k] if k else [])]
    assert shlex.split(pytest_command(fast, k)) == expected


def test_the_test_task_runs_that_command() -> None:
    ran: list[str] = []

    class Context:
        def run(self, command: str, **kwargs: object) -> None:
            ran.append(command)

    _tasks().test.body(Context(), fast=True, k="not 'x'")
    assert [shlex.split(c) for c in ran] == [["python", "-m", "pytest", "-m", "not slow", "-k", "not 'x'"]]
