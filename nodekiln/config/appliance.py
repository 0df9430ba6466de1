"""The site's `appliance` section: how the appliance ISO treats the machines it boots.

appliance:
  dataDisk:
    device: auto            # auto (first local disk) | /dev/PATH | serial:SERIAL
    wipeForeign: false      # true: a disk holding another partition table is wiped
  menuTimeout: 5            # seconds the boot menu waits before the automatic entry
"""

from __future__ import annotations

from pydantic import Field, field_validator

from nodekiln.config.model import Strict


class DataDisk(Strict):
    device: str = Field(
        default="auto",
        description="the data disk: auto (the first local, non-removable disk of at least 2 GiB), "
        "a device path (/dev/sdb, /dev/disk/by-id/...) or serial:SERIAL",
    )
    wipeForeign: bool = Field(
        default=False,
        description="wipe the data disk when it holds a partition table or file system nodekiln did not "
        "make; without it the boot stops with a message and the disk is left untouched",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if (
            value == "auto"
            or (value.startswith("/dev/") and len(value) > 5)
            or (value.startswith("serial:") and len(value) > 7)
        ):
            if any(c.isspace() or c in "'\"$`\\" for c in value):
                raise ValueError("no spaces or quotes in a device path or serial")
            return value
        raise ValueError("expected auto, a device path (/dev/...) or serial:SERIAL")


class Appliance(Strict):
    """How the appliance ISO (`invoke build-iso`) prepares each machine it boots."""

    dataDisk: DataDisk = Field(default_factory=DataDisk)
    menuTimeout: int = Field(default=5, ge=0, le=300, description="seconds the boot menu waits")
