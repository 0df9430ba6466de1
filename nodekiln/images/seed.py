"""NoCloud seed ISOs: cloud-init's user-data, meta-data and network-config on a `cidata` disk.

Pure Python (pycdlib): no genisoimage, no loop devices. Used by the boot tests and by the
hardware path (an ISO per node that a partner institute can attach).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import pycdlib

VOLUME_ID = "cidata"  # what cloud-init's NoCloud datasource looks for
NOCLOUD_FILES = ("user-data", "meta-data", "network-config", "vendor-data")


def write_seed_iso(target: Path, files: Mapping[str, bytes | str]) -> Path:
    """Write a NoCloud seed ISO holding `files` (names from NOCLOUD_FILES) to `target`.

    Joliet and Rock Ridge carry the real names (with dashes, lower case) that cloud-init
    reads; the ISO9660 names are the required 8.3 stand-ins. The file is written to a temp
    name and renamed, so a reader never sees half an ISO.
    """
    unknown = set(files) - set(NOCLOUD_FILES)
    if unknown:
        raise ValueError(f"not NoCloud seed files: {sorted(unknown)}")
    if "meta-data" not in files:
        raise ValueError("a NoCloud seed needs meta-data (at least an instance-id)")
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=VOLUME_ID)
    for name in sorted(files):
        data = files[name]
        raw = data.encode() if isinstance(data, str) else bytes(data)
        iso9660 = "/" + name.replace("-", "").upper()[:8] + ".;1"
        iso.add_fp(io.BytesIO(raw), len(raw), iso9660, rr_name=name, joliet_path="/" + name)
    tmp = target.with_name(target.name + ".tmp")
    target.parent.mkdir(parents=True, exist_ok=True)
    iso.write(str(tmp))
    iso.close()
    tmp.replace(target)
    return target


def read_seed_iso(path: Path) -> dict[str, bytes]:
    """The files of a seed ISO by their Rock Ridge names (for tests and `inspect`)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out: dict[str, bytes] = {}
        for child in iso.list_children(rr_path="/"):
            name = child.rock_ridge.name().decode() if child.rock_ridge else ""
            if child.is_file() and name:
                buf = io.BytesIO()
                iso.get_file_from_iso_fp(buf, rr_path="/" + name)
                out[name] = buf.getvalue()
        return out
    finally:
        iso.close()
