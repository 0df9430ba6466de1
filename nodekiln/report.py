"""Everything a task tells its user goes through one `Reporter`.

Messages and notes go to the reporter's console, progress (a spinner and a timer per stage,
bars) to its `live` console, on standard error; the one result a script reads — an artifact's
path — is a plain line on standard output. A stage passes the reporter down instead of a console, an `echo`, an `on_stage` and an
`on_line`; tests pass a `Recorder` and read what a user would have seen.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn


@dataclass
class StageTime:
    name: str
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "seconds": self.seconds}


class Stage(Protocol):
    """A running stage: says what it is doing now (a bake step, a hook, a server)."""

    def update(self, description: str) -> None: ...


class Reporter:
    """The user's view of a task: `say` and `note` for messages, `stage` for timed steps with
    progress, `detail` for an external program's lines (kept out of the way), `result` for the
    line a script reads. Every stage's timing is kept in `stages`, in order."""

    def __init__(self, console: Console | None = None, out: IO[str] | None = None, live: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.out = out or sys.stdout
        # Progress bars and spinners: on standard error even where messages go to standard
        # output, so `$(invoke build-image)` captures the path and not the bars.
        self.live = live or self.console
        self.stages: list[StageTime] = []
        self._progress: Progress | None = None

    @classmethod
    def quiet(cls) -> Reporter:
        """Says nothing: for a stage called from code that reports on its own."""
        return cls(console=Console(quiet=True), out=io.StringIO())

    def say(self, message: str) -> None:
        self.console.print(message, highlight=False)

    def note(self, message: str) -> None:
        """Something the user should act on, that does not stop the task."""
        self.console.print(f"note: {message}", style="yellow", highlight=False)

    def detail(self, line: str) -> None:
        """One line of an external program's output: shown dim, never mixed into the result."""
        self.console.print(f"[dim]{line}[/]", highlight=False, markup=True)

    def show(self, renderable: Any) -> None:
        """A table or other rich renderable (a plan, the figures)."""
        self.console.print(renderable)

    def result(self, text: str) -> None:
        """The one line a script reads (a path): plain, on standard output."""
        print(text, file=self.out, flush=True)

    @contextlib.contextmanager
    def progress(self) -> Iterator[None]:
        """Stages inside show as live rows with their times (one rich Progress for all)."""
        if self._progress is not None:
            yield
            return
        with Progress(
            SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=self.live
        ) as live:
            self._progress = live
            try:
                yield
            finally:
                self._progress = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Stage]:
        """Time one stage; its time is in `stages` even when it fails."""
        timing = StageTime(name)
        self.stages.append(timing)
        started = time.monotonic()
        row = _Row(self._progress, name) if self._progress is not None else _Line(self, name)
        try:
            yield row
        finally:
            timing.seconds = round(time.monotonic() - started, 1)
            row.done(timing.seconds)


class _Row:
    def __init__(self, progress: Progress, name: str) -> None:
        self.progress, self.name = progress, name
        self.task: TaskID = progress.add_task(name)

    def update(self, description: str) -> None:
        self.progress.update(self.task, description=description)

    def done(self, seconds: float) -> None:
        self.progress.update(self.task, description=f"{self.name} [dim]({seconds} s)[/]", completed=1, total=1)
        self.progress.stop_task(self.task)


class _Line:
    """A stage outside a live progress: one line as it starts (no spinner to update)."""

    def __init__(self, reporter: Reporter, name: str) -> None:
        reporter.console.print(f"[dim]… {name}[/]", highlight=False)

    def update(self, description: str) -> None:
        pass

    def done(self, seconds: float) -> None:
        pass


@dataclass
class Recorder(Reporter):
    """A reporter for tests: keeps every message by kind instead of printing it."""

    said: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    results: list[str] = field(default_factory=list)
    shown: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(console=Console(file=io.StringIO(), highlight=False))

    def say(self, message: str) -> None:
        self.said.append(message)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def detail(self, line: str) -> None:
        self.details.append(line)

    def show(self, renderable: Any) -> None:
        self.shown.append(renderable)

    def result(self, text: str) -> None:
        self.results.append(text)
