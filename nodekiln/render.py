"""site + secrets -> per-node cloud-init NoCloud data. Pure: no network, deterministic.

(Skeleton: the lead is filling this in. Interface for other stages:)
  render_site(site, secrets) -> dict[node name, RenderedNode]
  node_files(site, secrets, node) -> list[NodeFile]   every file written on the node
  write_site(site, secrets, out_dir) -> list[Path]     DIR/<node>/{user-data,meta-data,network-config}
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RenderedNode:
    name: str
    user_data: bytes  # '#cloud-config' text, or gzip of it when larger than 64 KiB
    meta_data: str
    network_config: str
