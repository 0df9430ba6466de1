"""Install order: dependencies first, otherwise the order the releases are declared in."""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from nodekiln.errors import NodekilnError


class CycleError(NodekilnError):
    def __init__(self, cycle: list[str]):
        self.cycle = cycle
        super().__init__(f"the releases depend on each other in a circle: {' -> '.join(cycle)}")


def order(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """Topological order of `deps` (name -> names it needs), stable in the mapping's order.

    Dependencies on names that are not keys are ignored (addons that are off).
    Raises CycleError naming one cycle.
    """
    rank = {name: i for i, name in enumerate(deps)}
    needs = {name: {d for d in ds if d in deps and d != name} for name, ds in deps.items()}
    users: dict[str, list[str]] = {name: [] for name in deps}
    for name, ds in needs.items():
        for d in ds:
            users[d].append(name)
    ready = [(rank[n], n) for n, ds in needs.items() if not ds]
    heapq.heapify(ready)
    done: list[str] = []
    remaining = {n: len(ds) for n, ds in needs.items()}
    while ready:
        _, name = heapq.heappop(ready)
        done.append(name)
        for user in users[name]:
            remaining[user] -= 1
            if remaining[user] == 0:
                heapq.heappush(ready, (rank[user], user))
    if len(done) < len(deps):
        raise CycleError(find_cycle({n: sorted(needs[n], key=rank.get) for n in deps if n not in done}))
    return done


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str]:
    """One cycle in a graph known to have one: [a, b, ..., a]."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for dep in deps.get(name, ()):
            if dep not in deps:
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[name] = 2
        return None

    for name in deps:
        if name not in state:
            found = visit(name)
            if found:
                return found
    return list(deps)[:1]
