"""Signatures of the builder key: who built an artifact.

Every artifact (qcow2, raw, ISO), its manifest, SBOM and provenance get a detached signature
`<file>.sig` made with `ssh-keygen -Y sign` under the namespace `nodekiln-image` with the
site's builder key (nodekiln.secrets.ensure_builder_key: ed25519, 0600, made once, no network).
Verification is `ssh-keygen -Y verify` against an allowed_signers file holding only the site's
builder public key, so a signature by any other key, for another namespace or over other bytes
fails. Ed25519 signatures are deterministic: the same bytes and key give the same `.sig`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from nodekiln.errors import NodekilnError, ToolError
from nodekiln.run import run
from nodekiln.secrets import BuilderKeyFiles, builder_key_files, ensure_builder_key

NAMESPACE = "nodekiln-image"
SIG_SUFFIX = ".sig"


class SignatureError(NodekilnError):
    """A file's signature is missing or does not verify against the site's builder key."""


def signature_path(path: Path) -> Path:
    return path.with_name(path.name + SIG_SUFFIX)


def builder_key(site_dir: Path, site_name: str) -> BuilderKeyFiles:
    """The site's builder key, made on first use."""
    return ensure_builder_key(site_dir, site_name)[0]


def trusted_key(site_dir: Path, site_name: str) -> BuilderKeyFiles:
    """The site's builder key files for verifying: the public key must exist (never made here)."""
    files = builder_key_files(site_dir, site_name)
    if not files.public.exists():
        raise SignatureError(
            f"{files.public}: site {site_name} has no builder public key, so nothing can be verified: "
            f"build with this site (it makes the key) or restore the key from your backup"
        )
    return files


def sign(key: BuilderKeyFiles, path: Path) -> Path:
    """Sign `path` (→ `path.sig`, replacing an older one); returns the signature's path."""
    sig = signature_path(path)
    sig.unlink(missing_ok=True)  # ssh-keygen asks before overwriting
    run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key.private), "-n", NAMESPACE, str(path)], timeout=600)
    if not sig.exists():
        raise SignatureError(f"{path}: ssh-keygen -Y sign wrote no signature {sig}")
    return sig


def sign_all(key: BuilderKeyFiles, paths: Iterable[Path]) -> list[Path]:
    return [sign(key, p) for p in paths]


def allowed_signers_line(key: BuilderKeyFiles) -> str:
    """The allowed_signers entry that trusts the builder key for the nodekiln namespace only."""
    fields = key.public.read_text().split()
    if len(fields) < 2 or not fields[0].startswith("ssh-"):
        raise SignatureError(f"{key.public}: not an OpenSSH public key")
    return f'{key.identity} namespaces="{NAMESPACE}" {fields[0]} {fields[1]}\n'


def verify(key: BuilderKeyFiles, path: Path, sig: Path | None = None) -> None:
    """Raise SignatureError naming `path` unless its signature is the builder key's over its bytes."""
    sig = sig or signature_path(path)
    if not path.exists():
        raise SignatureError(f"{path}: does not exist")
    if not sig.exists():
        raise SignatureError(f"{path}: no signature ({sig.name} is missing): it was not signed by a nodekiln build")
    with tempfile.TemporaryDirectory(prefix="nodekiln-verify-") as tmp:
        signers = Path(tmp) / "allowed_signers"
        signers.write_text(allowed_signers_line(key))
        # ssh-keygen reads the signed data from standard input: the shell redirects the file
        # (artifacts are gigabytes; run's `input` is text).
        argv = [
            "sh",
            "-c",
            'exec ssh-keygen -Y verify -f "$1" -I "$2" -n "$3" -s "$4" < "$5"',
            "verify",
            str(signers),
            key.identity,
            NAMESPACE,
            str(sig),
            str(path),
        ]
        try:
            run(argv, timeout=600)
        except ToolError as exc:
            said = " ".join(line.strip().rstrip(".") for line in exc.tail if line.strip()) or f"exit {exc.returncode}"
            raise SignatureError(
                f"{path}: its signature {sig.name} does not verify against the builder key of "
                f"{key.identity} ({key.public}): {said}. The file was changed after it was signed, "
                f"or signed by another key: do not use it"
            ) from None
