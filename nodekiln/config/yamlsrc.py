"""YAML loading that remembers where every value came from, for errors that name the line."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nodekiln.errors import Problem, SiteError

try:  # libyaml makes a 1,000-node site parse in milliseconds
    Loader: type = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    Loader = yaml.SafeLoader

PathKey = tuple[str | int, ...]


def dotted(path: PathKey) -> str:
    """('nodes', 1, 'address') -> 'nodes[1].address'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


@dataclass
class Source:
    """A parsed YAML document with the line of every path in it."""

    file: Path
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line(self, path: PathKey) -> int:
        """The line of `path`, or of its nearest ancestor present in the file."""
        for end in range(len(path), -1, -1):
            found = self.lines.get(tuple(path[:end]))
            if found is not None:
                return found
        return 0

    def problem(self, path: PathKey, message: str) -> Problem:
        return Problem(str(self.file), self.line(path), dotted(path), message)


def load(file: Path) -> Source:
    """Parse one YAML file; a missing file or bad YAML is a SiteError naming the line."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SiteError([Problem(str(file), 0, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteError([Problem(str(file), 0, "", f"cannot read the file: {exc}")]) from None
    try:
        node = yaml.compose(text, Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 0
        what = getattr(exc, "problem", None) or str(exc)
        raise SiteError([Problem(str(file), line, "", f"YAML does not parse: {what}")]) from None
    source = Source(file=file, data=None)
    problems: list[Problem] = []
    if node is not None:
        _index(node, (), source.lines, problems, file)
        source.data = yaml.load(text, Loader=Loader)
    if problems:
        raise SiteError(problems)
    return source


def _index(node: yaml.Node, path: PathKey, lines: dict[PathKey, int], problems: list[Problem], file: Path) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                problems.append(
                    Problem(str(file), line, dotted((*path, key)), f"key repeats (first at line {seen[key]})")
                )
            seen[key] = line
            lines[(*path, key)] = line
            _index(value_node, (*path, key), lines, problems, file)
            lines[(*path, key)] = line  # a key's line, not its value's, is what a reader looks for
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index(item, (*path, i), lines, problems, file)
