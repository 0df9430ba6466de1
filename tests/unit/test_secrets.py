"""The secrets store: created once, 0600, never silently replaced, never printed."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from nodekiln.bootstrap.kubeconfig import admin_kubeconfig
from nodekiln.config.site import load_site
from nodekiln.errors import SecretsError
from nodekiln.secrets import SecretStore, ca_cert_hash

REPO = Path(__file__).resolve().parents[2]


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, capture_output=True, text=True)


def test_created_once_with_mode_0600_and_gitignore(example_site):
    site = load_site(example_site)
    store = SecretStore(site.directory, site.name)
    first, created = store.ensure()
    assert created
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.dir.stat().st_mode & 0o777 == 0o700
    assert "*" in (store.dir / ".gitignore").read_text().splitlines()
    again, created_again = store.ensure()
    assert not created_again
    assert again == first


def test_contents_are_what_kubeadm_needs(example_site):
    site = load_site(example_site)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    for pair, cn in ((secrets.ca, "kubernetes"), (secrets.etcdCA, "etcd-ca"), (secrets.frontProxyCA, "front-proxy-ca")):
        cert = x509.load_pem_x509_certificate(pair.cert.encode())
        assert cert.subject.rfc4514_string() == f"CN={cn}"
        assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    import re

    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", secrets.bootstrapToken)
    assert len(secrets.vrrpPassword) == 8  # keepalived's PASS auth reads 8 characters
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", secrets.ca_cert_hash)


def test_ca_cert_hash_matches_openssl(example_site):
    """kubeadm documents the hash as openssl's: pubkey | DER | sha256."""
    site = load_site(example_site)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    pub = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout"], input=secrets.ca.cert, capture_output=True, text=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pub.encode(), capture_output=True, check=True
    ).stdout
    import hashlib

    assert ca_cert_hash(secrets.ca.cert) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_never_regenerated_silently(example_site):
    site = load_site(example_site)
    store = SecretStore(site.directory, site.name)
    store.ensure()
    with pytest.raises(SecretsError, match="never replaces them silently"):
        store.create()


def test_lost_store_is_an_error_not_a_new_ca(example_site):
    site = load_site(example_site)
    store = SecretStore(site.directory, site.name)
    store.ensure()
    store.path.unlink()
    with pytest.raises(SecretsError, match=r"missing.*restore"):
        store.ensure()
    result = invoke("kubeconfig", "--site", str(example_site))
    assert result.returncode == 2 and "restore" in result.stderr and "Traceback" not in result.stderr


def test_corrupt_store_is_a_clear_error_without_key_material(example_site):
    site = load_site(example_site)
    store = SecretStore(site.directory, site.name)
    _secrets, _ = store.ensure()
    store.path.write_text(store.path.read_text()[:300])
    with pytest.raises(SecretsError, match="corrupt") as info:
        store.load()
    assert "PRIVATE KEY" not in str(info.value)


def test_store_readable_by_others_is_refused(example_site):
    site = load_site(example_site)
    store = SecretStore(site.directory, site.name)
    store.ensure()
    store.path.chmod(0o644)
    with pytest.raises(SecretsError, match="0600"):
        store.load()


def test_named_extra_secret_is_added_not_regenerated(example_site):
    site = load_site(example_site)
    store = SecretStore(site.directory, site.name)
    before, _ = store.ensure()
    value = store.named("velero-s3", lambda: "s3cr3t-value")
    assert store.named("velero-s3", lambda: "other") == "s3cr3t-value" == value
    after = store.load()
    assert after.ca == before.ca and after.bootstrapToken == before.bootstrapToken
    assert store.path.stat().st_mode & 0o777 == 0o600


def test_secrets_task_prints_no_secret(example_site):
    result = invoke("secrets", "--site", str(example_site))
    assert result.returncode == 0, result.stderr
    site = load_site(example_site)
    secrets = SecretStore(site.directory, site.name).load()
    shown = result.stdout + result.stderr
    for value in (secrets.bootstrapToken, secrets.vrrpPassword, secrets.ca.key[40:80]):
        assert value not in shown
    assert "redacted" in repr(secrets) and secrets.vrrpPassword not in repr(secrets)


def test_kubeconfig_is_signed_by_the_site_ca(example_site, tmp_path):
    target = tmp_path / "admin.conf"
    result = invoke("kubeconfig", "--site", str(example_site), "--out", str(target))
    assert result.returncode == 0, result.stderr
    assert target.stat().st_mode & 0o777 == 0o600
    config = yaml.safe_load(target.read_text())
    assert config["clusters"][0]["cluster"]["server"] == "https://10.0.1.128:7443"
    site = load_site(example_site)
    secrets = SecretStore(site.directory, site.name).load()
    client = x509.load_pem_x509_certificate(base64.b64decode(config["users"][0]["user"]["client-certificate-data"]))
    ca = x509.load_pem_x509_certificate(secrets.ca.cert.encode())
    client.verify_directly_issued_by(ca)
    assert "O=kubeadm:cluster-admins" in client.subject.rfc4514_string()
    assert base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"]).decode() == secrets.ca.cert


def test_admin_kubeconfig_function_uses_endpoint(example_site):
    site = load_site(example_site)
    secrets, _ = SecretStore(site.directory, site.name).ensure()
    assert "https://10.0.1.128:7443" in admin_kubeconfig(site, secrets, days=1)
