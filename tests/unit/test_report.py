"""The one reporter: messages to standard error, the result alone on standard output, stage times kept."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from nodekiln.report import Recorder, Reporter


def _reporter() -> tuple[Reporter, io.StringIO, io.StringIO]:
    err, out = io.StringIO(), io.StringIO()
    return Reporter(console=Console(file=err, width=200, color_system=None), out=out), err, out


def test_the_result_is_alone_on_standard_output() -> None:
    report, err, out = _reporter()
    report.say("built in 3 s")
    report.note("secret x is not in the store yet")
    report.detail("dib-run-parts Running /tmp/hook")
    report.result("/build/images/site-abc.qcow2")
    assert out.getvalue() == "/build/images/site-abc.qcow2\n"
    assert "built in 3 s" in err.getvalue() and "note: secret x" in err.getvalue()
    assert "dib-run-parts Running /tmp/hook" in err.getvalue()


def test_stages_are_timed_in_order_even_when_one_fails() -> None:
    report, err, _ = _reporter()
    with report.progress():
        with report.stage("unpack") as stage:
            stage.update("unpack: 10 %")
        with pytest.raises(RuntimeError), report.stage("assemble"):
            raise RuntimeError("mkfs failed")
    assert [s.name for s in report.stages] == ["unpack", "assemble"]
    assert all(s.seconds >= 0 for s in report.stages)
    assert "assemble" in err.getvalue()


def test_a_stage_outside_a_progress_prints_one_line() -> None:
    report, err, _ = _reporter()
    with report.stage("stage bake steps"):
        pass
    assert "… stage bake steps" in err.getvalue()


def test_the_recorder_keeps_what_a_user_would_have_seen() -> None:
    report = Recorder()
    report.say("a")
    report.note("b")
    report.result("c")
    with report.stage("d"):
        pass
    assert (report.said, report.notes, report.results, [s.name for s in report.stages]) == (["a"], ["b"], ["c"], ["d"])
