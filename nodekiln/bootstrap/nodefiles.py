"""Files that nodekiln places on a node (through cloud-init's write_files)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class NodeFile:
    path: str  # absolute path on the node
    content: str
    mode: int = 0o644  # secrets: 0o600

    @property
    def secret(self) -> bool:
        return not self.mode & 0o077
