"""A small typed driver for the `packer` binary (python-packer 0.1.2 is broken on Python 3).

What it does: find Packer and its version; put the templates of images/packer/ in a work
directory (with `required_plugins` only for Packer >= 1.7, which then gets `packer init`);
`validate`; `build` with `-machine-readable` output parsed into `Event`s (shown as progress
with rich by `build_image_packer`); read the artifacts from the `manifest` post-processor.
Errors show Packer's last lines (ToolError). Ctrl-C sends Packer SIGINT (its own cancel: it
stops the VM and deletes its output) and, if Packer lingers, kills its whole process group;
the work directory (stage, seed, keys, disks) is removed either way.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nodekiln.errors import NodekilnError, ToolError
from nodekiln.images.manifest import IMAGES_DIR
from nodekiln.run import output, run, which

PACKER_DIR = IMAGES_DIR / "packer"
PLUGINS_FILE = PACKER_DIR / "plugins" / "required_plugins.pkr.hcl"
MIN_VERSION = (1, 6, 6)
PLUGINS_FROM = (1, 7, 0)  # builders are plugins from here on: required_plugins + packer init
SOURCES = {"packer-qemu": "qemu.node", "packer-openstack": "openstack.node"}
COMMA = "%!(PACKER_COMMA)"
# Packer cancels a build on SIGINT (stops the VM, deletes its output directory): give it time.
INTERRUPT = ((signal.SIGINT, 60.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0))


class PackerError(NodekilnError):
    """Packer is too old, or its build produced no usable artifact."""


@dataclass(frozen=True, order=True)
class PackerVersion:
    major: int
    minor: int
    patch: int

    @classmethod
    def parse(cls, text: str) -> PackerVersion:
        """From `packer version` output ("Packer v1.6.6", maybe more lines) or "1.11.2"."""
        match = re.search(r"(?:^|v|\s)(\d+)\.(\d+)\.(\d+)", text)
        if not match:
            raise PackerError(f"cannot read a Packer version from {text.strip()[:80]!r}")
        return cls(*(int(g) for g in match.groups()))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @property
    def tuple(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    @property
    def needs_plugins(self) -> bool:
        return self.tuple >= PLUGINS_FROM


def packer_version() -> PackerVersion:
    """The installed Packer's version; MissingToolError (with the install command) if absent."""
    which("packer")
    version = PackerVersion.parse(output(["packer", "version"]))
    if version.tuple < MIN_VERSION:
        raise PackerError(
            f"Packer {version} is too old: nodekiln's templates need HCL2, Packer >= {'.'.join(map(str, MIN_VERSION))}"
        )
    return version


@dataclass(frozen=True)
class Event:
    """One line of `packer -machine-readable` output: timestamp,target,type,data..."""

    timestamp: int
    target: str
    type: str
    data: tuple[str, ...]

    @property
    def ui_kind(self) -> str | None:
        """say / message / error for UI lines, else None."""
        return self.data[0] if self.type == "ui" and self.data else None

    @property
    def text(self) -> str:
        if self.type == "ui" and len(self.data) > 1:
            return self.data[1]
        return ",".join(self.data)


def unescape(field_text: str) -> str:
    return field_text.replace(COMMA, ",").replace("\\n", "\n").replace("\\r", "\r")


def parse_line(line: str) -> Event | None:
    """An Event, or None for a line that is not machine-readable output."""
    parts = line.rstrip("\n").split(",")
    if len(parts) < 3 or not parts[0].isdigit():
        return None
    return Event(int(parts[0]), parts[1], parts[2], tuple(unescape(p) for p in parts[3:]))


@dataclass
class Artifact:
    """One build of the manifest post-processor's file (its last run)."""

    name: str
    builder_type: str
    artifact_id: str
    files: list[Path]
    custom_data: dict[str, str] = field(default_factory=dict)


def read_manifest(path: Path) -> list[Artifact]:
    """The builds of the last run recorded in Packer's manifest post-processor output."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise PackerError(f"Packer wrote no readable manifest at {path}: {exc}") from exc
    last = doc.get("last_run_uuid")
    out = []
    for build in doc.get("builds", []):
        if last and build.get("packer_run_uuid") != last:
            continue
        out.append(
            Artifact(
                name=build.get("name", ""),
                builder_type=build.get("builder_type", ""),
                artifact_id=build.get("artifact_id", ""),
                files=[Path(f["name"]) for f in build.get("files") or []],
                custom_data=dict(build.get("custom_data") or {}),
            )
        )
    return out


def template_dir(work: Path, version: PackerVersion, log: Path | None = None) -> Path:
    """images/packer/*.pkr.hcl copied into `work/templates`, plus required_plugins (and
    `packer init`) when this Packer loads its builders as plugins (>= 1.7)."""
    target = work / "templates"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    for template in sorted(PACKER_DIR.glob("*.pkr.hcl")):
        shutil.copy2(template, target / template.name)
    if version.needs_plugins:
        shutil.copy2(PLUGINS_FILE, target / PLUGINS_FILE.name)
        run(["packer", "init", target], log=log, tail=30)
    return target


def _argv(
    command: str, templates: Path, var_file: Path | None, only: str | None, extra: Sequence[str] = ()
) -> list[str]:
    argv = ["packer", command, *extra]
    if only:
        argv.append(f"-only={only}")
    if var_file is not None:
        argv.append(f"-var-file={var_file}")
    argv.append(str(templates))
    return argv


def validate(
    templates: Path,
    var_file: Path | None = None,
    only: str | None = None,
    syntax_only: bool = False,
    env: dict[str, str] | None = None,
) -> str:
    """`packer validate`; ToolError with Packer's own message when the template is wrong."""
    extra = ["-syntax-only"] if syntax_only else []
    result = run(_argv("validate", templates, var_file, only, extra), cwd=templates, env=env, check=False, tail=40)
    if result.returncode != 0:
        raise ToolError(result.argv, result.returncode, result.output.strip().splitlines()[-40:])
    return result.output


def build(
    templates: Path,
    var_file: Path,
    only: str,
    log: Path,
    on_event: Callable[[Event], None] | None = None,
    env: dict[str, str] | None = None,
) -> list[Event]:
    """`packer build -machine-readable`; every event goes to `on_event`; returns the artifact
    events. On failure the ToolError carries Packer's last UI lines (not raw CSV)."""
    events: list[Event] = []
    ui_tail: list[str] = []

    def feed(line: str) -> None:
        event = parse_line(line)
        if event is None:
            return
        if event.type == "ui":
            ui_tail.extend(event.text.splitlines() or [""])
            del ui_tail[:-40]
        if event.type.startswith("artifact") or event.type == "error-count":
            events.append(event)
        if on_event is not None:
            on_event(event)

    argv = _argv("build", templates, var_file, only, ["-machine-readable", "-color=false", "-force"])
    result = run(
        argv,
        cwd=templates,
        env={
            "PACKER_NO_COLOR": "1",
            "CHECKPOINT_DISABLE": "1",
            "PACKER_CACHE_DIR": str(templates.parent / "packer_cache"),
            **(env or {}),
        },
        log=log,
        on_line=feed,
        check=False,
        capture=False,
        tail=40,
        interrupt=INTERRUPT,
    )
    if result.returncode != 0:
        raise ToolError(result.argv, result.returncode, ui_tail, log)
    return events


def check_templates(
    work: Path,
    only: str,
    version: PackerVersion | None = None,
    syntax_only: bool = False,
    env: dict[str, str] | None = None,
) -> str:
    """`packer validate` of the templates for one source (qemu.node or openstack.node) with
    placeholder inputs in `work` (what CI runs; the openstack builder authenticates while it
    validates, so `env` must point at an identity endpoint unless `syntax_only`)."""
    version = version or packer_version()
    templates = template_dir(work, version)
    (work / "nodekiln-stage").mkdir(exist_ok=True)
    for name in ("base.qcow2", "seed.iso"):
        (work / name).touch()
    from nodekiln.images.machine import generate_ssh_key

    generate_ssh_key(work)
    variables = {
        "stage_dir": str(work / "nodekiln-stage"),
        "tree_file": str(work / "tree.tar.zst"),
        "manifest_file": str(work / "packer-manifest.json"),
        "base_image": str(work / "base.qcow2"),
        "seed_iso": str(work / "seed.iso"),
        "ssh_private_key_file": str(work / "id_ed25519"),
        "output_directory": str(work / "packer-output"),
        "console_log": str(work / "console.log"),
        "base_image_checksum": "sha256:" + "0" * 64,
    }
    var_file = work / "variables.json"
    var_file.write_text(json.dumps(variables, indent=2) + "\n")
    return validate(templates, var_file, only, syntax_only=syntax_only, env=env)
