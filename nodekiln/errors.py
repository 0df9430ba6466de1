"""Errors a user can act on: printed as plain messages, never as tracebacks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class NodekilnError(Exception):
    """Base of every error that tasks print as a message and exit 2 on."""

    exit_code = 2


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong in a file: where it is and what was expected."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.path}:" if self.path else ""
        return f"{where}:{field} {self.message}"


class SiteError(NodekilnError):
    """A site file (or a file it names) is not valid; carries every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(set(problems))
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the site file:"
        super().__init__("\n".join([head, *(f"  {p}" for p in self.problems)]))


class SecretsError(NodekilnError):
    """The secrets store is missing, corrupt or would be overwritten."""


def _tool_message(headline: str, tail: list[str], log: Path | None, silent: str | None = None) -> str:
    """An external program's failure: what happened, its last lines of output, its log."""
    lines = [headline]
    if tail:
        lines.append("last lines of its output:")
        lines.extend(f"  | {line}" for line in tail)
    elif silent:
        lines.append(silent)
    if log is not None:
        lines.append(f"full log: {log}")
    return "\n".join(lines)


class ToolError(NodekilnError):
    """An external program failed; the message ends with its last lines of output."""

    def __init__(self, argv: list[str], returncode: int, tail: list[str], log: Path | None = None):
        self.argv = argv
        self.returncode = returncode
        self.tail = tail
        self.log = log
        super().__init__(_tool_message(f"{Path(argv[0]).name} failed (exit {returncode}): {' '.join(argv)}", tail, log))


class ToolTimeoutError(NodekilnError, TimeoutError):
    """An external program ran past its timeout and was stopped; the message ends with its
    last lines of output. Also a TimeoutError, so callers that treat a timeout as "no" (qemu's
    accelerator probe, the addons stage) keep catching it."""

    def __init__(self, argv: list[str], timeout: float, tail: list[str], log: Path | None = None):
        self.argv = argv
        self.timeout = timeout
        self.tail = tail
        self.log = log
        super().__init__(
            _tool_message(
                f"{Path(argv[0]).name} did not finish within {timeout:g} s and was stopped: {' '.join(argv)}",
                tail,
                log,
                silent="it printed nothing",
            )
        )


class MissingToolError(NodekilnError):
    """A program nodekiln needs is not installed."""

    def __init__(self, tool: str, package: str):
        self.tool = tool
        self.package = package
        super().__init__(f"{tool} is not installed; install it with: apt-get install -y {package}")
