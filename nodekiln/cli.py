"""What tasks.py shares: error handling and output. No stage logic lives here."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from invoke.exceptions import Exit
from rich.console import Console
from rich.table import Table

from nodekiln.errors import NodekilnError

F = TypeVar("F", bound=Callable[..., object])

console = Console(highlight=False, soft_wrap=True)


def handled(fn: F) -> F:
    """Turn NodekilnError into its message on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NodekilnError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            print("interrupted: nothing half-written was left behind", file=sys.stderr)
            raise Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def figures_table(figures) -> Table:
    table = Table("figure", "value", "unit", "goal", "met")
    for f in figures:
        met = {True: "yes", False: "NO", None: "-"}[f.met]
        table.add_row(f.name, f"{f.value:g}", f.unit, f.goal, met)
    return table


def figure_details(figures) -> str:
    """What each figure includes (where the time went), one paragraph per figure."""
    return "\n".join(f"{f.name}: {f.detail}" for f in figures if f.detail)
