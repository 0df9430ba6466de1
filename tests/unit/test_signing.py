"""The builder key and its signatures (nodekiln/images/signing.py) with the real ssh-keygen:
made once, 0600, never replaced silently; a signature verifies only over the same bytes, by
the same key, for nodekiln's namespace."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodekiln.errors import SecretsError
from nodekiln.images import signing
from nodekiln.run import run
from nodekiln.secrets import ensure_builder_key


def test_the_builder_key_is_made_once_0600_with_its_public_key_beside(tmp_path: Path) -> None:
    files, created = ensure_builder_key(tmp_path, "lab")
    assert created and files.private.name == "lab-builder.key" and files.public.name == "lab-builder.pub"
    assert files.private.stat().st_mode & 0o777 == 0o600
    assert files.public.read_text().startswith("ssh-ed25519 ") and "nodekiln-builder@lab" in files.public.read_text()
    key = files.private.read_bytes()
    again, created = ensure_builder_key(tmp_path, "lab")
    assert not created and again == files and files.private.read_bytes() == key
    assert "builder.key" not in repr(files) and "PRIVATE" not in repr(files)  # a log line shows the public side


def test_a_lost_builder_key_is_an_error_not_a_new_key(tmp_path: Path) -> None:
    files, _ = ensure_builder_key(tmp_path, "lab")
    files.private.unlink()
    with pytest.raises(SecretsError, match="builder key of site lab is missing"):
        ensure_builder_key(tmp_path, "lab")


def test_a_readable_builder_key_is_refused(tmp_path: Path) -> None:
    files, _ = ensure_builder_key(tmp_path, "lab")
    files.private.chmod(0o644)
    with pytest.raises(SecretsError, match="expected 0600"):
        ensure_builder_key(tmp_path, "lab")


def test_sign_and_verify_and_a_changed_byte_fails(tmp_path: Path) -> None:
    key = signing.builder_key(tmp_path, "lab")
    data = tmp_path / "disk.qcow2"
    data.write_bytes(bytes(range(256)) * 64)
    sig = signing.sign(key, data)
    assert sig == tmp_path / "disk.qcow2.sig" and "BEGIN SSH SIGNATURE" in sig.read_text()
    signing.verify(key, data)
    first = sig.read_bytes()
    signing.sign(key, data)
    assert sig.read_bytes() == first  # ed25519: the same bytes give the same signature
    raw = bytearray(data.read_bytes())
    raw[1000] ^= 1
    data.write_bytes(bytes(raw))
    with pytest.raises(signing.SignatureError, match=r"disk\.qcow2: its signature disk\.qcow2\.sig does not verify"):
        signing.verify(key, data)


def test_another_key_or_namespace_or_no_signature_fails(tmp_path: Path) -> None:
    ours = signing.builder_key(tmp_path / "a", "lab")
    theirs = signing.builder_key(tmp_path / "b", "lab")
    data = tmp_path / "m.json"
    data.write_text("{}\n")
    signing.sign(theirs, data)
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.verify(ours, data)
    data.with_name("m.json.sig").unlink()
    run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(ours.private), "-n", "file", str(data)])
    with pytest.raises(signing.SignatureError, match="does not verify"):
        signing.verify(ours, data)  # our key, but not signed for nodekiln-image
    data.with_name("m.json.sig").unlink()
    with pytest.raises(signing.SignatureError, match="no signature"):
        signing.verify(ours, data)


def test_verifying_needs_the_site_s_public_key_and_never_makes_one(tmp_path: Path) -> None:
    with pytest.raises(signing.SignatureError, match="no builder public key"):
        signing.trusted_key(tmp_path, "lab")
    assert not (tmp_path / ".nodekiln").exists()
