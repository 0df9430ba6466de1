"""nodekiln.run: a timeout fires even when the program prints nothing, stops its whole process
group and says which program, which timeout and what it printed last (issue #18)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from nodekiln.errors import NodekilnError, ToolTimeoutError
from nodekiln.run import run


def _gone(pid: int, within: float = 3.0) -> bool:
    """The process has exited (gone, or a zombie waiting for init to reap it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


def test_a_silent_program_times_out_and_is_stopped() -> None:
    started = time.monotonic()
    with pytest.raises(ToolTimeoutError) as caught:
        run(["sh", "-c", "sleep 30"], timeout=1)
    assert time.monotonic() - started < 3
    error = caught.value
    # handled() shows NodekilnErrors as one message; callers that treat a timeout as "no"
    # (qemu.accelerator, the addons stage) catch TimeoutError.
    assert isinstance(error, NodekilnError) and isinstance(error, TimeoutError)
    assert "sh did not finish within 1 s" in str(error)
    assert "it printed nothing" in str(error)


def test_the_message_ends_with_the_last_lines_and_the_group_is_killed(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    # The background sleep is a grandchild: only a process-group kill reaches it.
    script = "sleep 30 & echo child $!; echo second line; wait"
    with pytest.raises(ToolTimeoutError) as caught:
        run(["sh", "-c", script], timeout=1, log=log)
    message = str(caught.value)
    assert "  | second line" in message
    assert f"full log: {log}" in message
    child = int(next(line for line in caught.value.tail if line.startswith("child ")).split()[1])
    assert _gone(child), "the program's own child outlived the timeout"
    assert "second line" in log.read_text()


def test_a_program_printing_forever_still_times_out() -> None:
    started = time.monotonic()
    with pytest.raises(ToolTimeoutError) as caught:
        run(["sh", "-c", "while :; do echo tick; done"], timeout=1, capture=False)
    assert time.monotonic() - started < 3
    assert "  | tick" in str(caught.value)


def test_a_program_that_prints_within_its_timeout_is_unaffected(tmp_path: Path) -> None:
    seen: list[str] = []
    log = tmp_path / "run.log"
    result = run(
        ["sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done; printf 'no newline'"],
        timeout=10,
        on_line=seen.append,
        log=log,
    )
    assert result.returncode == 0
    assert result.output == "line 1\nline 2\nline 3\nno newline"
    assert seen == ["line 1", "line 2", "line 3", "no newline"]
    assert log.read_text() == result.output


def test_output_reads_as_text_mode_did() -> None:
    # \r\n and a lone \r end a line, bad bytes are replaced; a multi-byte character split
    # across writes stays whole.
    script = r"printf 'a\r\nb\rc\n\377\n'; printf '\303'; sleep 0.1; printf '\251\n'"
    assert run(["sh", "-c", script]).output == "a\nb\nc\n\ufffd\n\u00e9\n"


def test_many_lines_and_input() -> None:
    result = run(["sh", "-c", "cat; seq 1 20000"], input="from stdin\n")
    lines = result.output.splitlines()
    assert lines[0] == "from stdin" and lines[-1] == "20000" and len(lines) == 20001


def test_no_timeout_waits_for_the_program() -> None:
    assert run(["sh", "-c", "sleep 1.5; echo done"]).output == "done\n"


def test_ctrl_c_while_the_program_is_silent_stops_it(tmp_path: Path) -> None:
    # Ctrl-C must still reach the main thread while it waits for output.
    log = tmp_path / "run.log"
    timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            run(["sh", "-c", "sleep 30 & echo child $!; wait"], log=log)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 3
    assert _gone(int(log.read_text().split()[1]))
