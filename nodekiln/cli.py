"""What tasks.py shares: error handling and output. No stage logic lives here."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar, overload

from invoke.exceptions import Exit
from rich.console import Console

from nodekiln.errors import NodekilnError
from nodekiln.report import Reporter

P = ParamSpec("P")
R = TypeVar("R")

console = Console(highlight=False, soft_wrap=True)


def reporter() -> Reporter:
    """What every task prints goes through this: messages with the result on standard output, as
    the tasks always printed them; progress on standard error."""
    return Reporter(console=console, live=Console(stderr=True, highlight=False))


# True of the tasks that only write files: each is written to a temporary name and renamed.
NOTHING_HALF_WRITTEN = "interrupted: nothing half-written was left behind"


@overload
def handled(fn: Callable[P, R], *, interrupted: str = NOTHING_HALF_WRITTEN) -> Callable[P, R]: ...
@overload
def handled(
    fn: None = None, *, interrupted: str = NOTHING_HALF_WRITTEN
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


def handled(
    fn: Callable[P, R] | None = None, *, interrupted: str = NOTHING_HALF_WRITTEN
) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn NodekilnError into its message on stderr and exit code 2 (no traceback), and Ctrl-C
    into `interrupted` and exit code 130.

    `@handled` alone is for tasks that only write files atomically; a task that changes more
    (a cloud, a cluster) says what an interruption leaves: `@handled(interrupted="...")`.
    """
    if fn is None:
        return functools.partial(handled, interrupted=interrupted)

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except NodekilnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            raise Exit(code=130) from None

    # Each task's own message, which tests check; mypy knows of no attributes set on a function.
    wrapper.interrupted = interrupted  # type: ignore[attr-defined]
    return wrapper
