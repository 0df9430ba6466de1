"""The site's secrets: cluster PKI, service-account keys, bootstrap token, VRRP password.

Created once per site under `<site dir>/.nodekiln/` with mode 0600 and never regenerated
silently. A non-secret fingerprint file beside the store records that secrets exist, so a lost
store is an error instead of a quiet new CA that no running node trusts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import secrets as rand
import string
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificateIssuerPublicKeyTypes,
)
from cryptography.x509.oid import NameOID
from pydantic import BaseModel, ConfigDict, ValidationError

from nodekiln.errors import SecretsError
from nodekiln.files import write_atomic

CA_YEARS = 10
STORE_DIR = ".nodekiln"
GITIGNORE = "# nodekiln secrets: never commit them\n*\n!.gitignore\n!*.fingerprint\n"
# The key types that can sign a certificate: a certificate may also hold an X25519 or X448 key,
# which only agrees on keys.
_ISSUER_PUBLIC_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    dsa.DSAPublicKey,
)
_ISSUER_PRIVATE_KEYS = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
    dsa.DSAPrivateKey,
)


class KeyPair(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    cert: str  # PEM; for the service-account pair, the public key
    key: str  # PEM, PKCS#8


class Secrets(BaseModel):
    """Everything secret about one site. Never print or log an instance."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    version: int = 1
    ca: KeyPair
    etcdCA: KeyPair
    frontProxyCA: KeyPair
    serviceAccount: KeyPair
    bootstrapToken: str
    vrrpPassword: str
    # Secrets of later stages (addons' S3 keys, admin passwords), added by name on first use.
    extra: dict[str, str] = {}

    def __repr__(self) -> str:  # a stray print or log line must not leak keys
        return "Secrets(<redacted>)"

    __str__ = __repr__

    @property
    def token_id(self) -> str:
        return self.bootstrapToken.split(".")[0]

    @property
    def ca_cert_hash(self) -> str:
        """kubeadm's --discovery-token-ca-cert-hash: sha256 of the CA's SubjectPublicKeyInfo."""
        return ca_cert_hash(self.ca.cert)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.ca.cert.encode()).hexdigest()


def ca_cert_hash(cert_pem: str) -> str:
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem_key(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def make_ca(common_name: str, now: dt.datetime | None = None) -> KeyPair:
    """A self-signed CA as kubeadm makes them (RSA 2048, 10 years)."""
    now = now or dt.datetime.now(dt.UTC)
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, True, False, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert=cert.public_bytes(serialization.Encoding.PEM).decode(), key=_pem_key(key))


def _issuer(ca: KeyPair) -> tuple[x509.Name, CertificateIssuerPublicKeyTypes, CertificateIssuerPrivateKeyTypes]:
    """The CA's name, public key and private key, checked to be a kind that signs certificates."""
    cert = x509.load_pem_x509_certificate(ca.cert.encode())
    public = cert.public_key()
    key = serialization.load_pem_private_key(ca.key.encode(), password=None)
    if not isinstance(public, _ISSUER_PUBLIC_KEYS) or not isinstance(key, _ISSUER_PRIVATE_KEYS):
        raise SecretsError(
            f"CA {cert.subject.rfc4514_string()}: its keys ({type(public).__name__}, {type(key).__name__}) cannot sign "
            "certificates: expected RSA, EC, Ed25519, Ed448 or DSA"
        )
    return cert.subject, public, key


def _leaf(
    ca: KeyPair,
    subject: x509.Name,
    days: int,
    usage: x509.ObjectIdentifier,
    dns_names: Sequence[str] = (),
    ips: Sequence[str] = (),
) -> KeyPair:
    """A certificate signed by `ca` for one extended key usage (and, for servers, its names)."""
    ca_name, ca_public, ca_key = _issuer(ca)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return KeyPair(cert=cert.public_bytes(serialization.Encoding.PEM).decode(), key=_pem_key(key))


def make_client_cert(ca: KeyPair, common_name: str, organization: str, days: int) -> KeyPair:
    """A client certificate signed by `ca` (for the admin kubeconfig)."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    return _leaf(ca, subject, days, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH)


def make_serving_cert(
    ca: KeyPair, dns_names: Sequence[str], days: int, *, ips: Sequence[str] = (), common_name: str | None = None
) -> KeyPair:
    """A TLS server certificate signed by `ca` for `dns_names` and `ips` (common name: the
    given one, else the first DNS name)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name or dns_names[0])])
    return _leaf(ca, subject, days, x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, dns_names, ips)


def bootstrap_token() -> str:
    """A kubeadm bootstrap token: [a-z0-9]{6}.[a-z0-9]{16}."""
    alphabet = string.ascii_lowercase + string.digits
    return f"{_random(alphabet, 6)}.{_random(alphabet, 16)}"


def _random(alphabet: str, length: int) -> str:
    return "".join(rand.choice(alphabet) for _ in range(length))


def password(length: int = 32) -> str:
    """A random password of letters and digits (safe in YAML, URLs and shell)."""
    return "".join(rand.choice(string.ascii_letters + string.digits) for _ in range(length))


def vrrp_password() -> str:
    # keepalived's PASS authentication uses only the first 8 characters.
    return "".join(rand.choice(string.ascii_letters + string.digits) for _ in range(8))


def generate() -> Secrets:
    sa = _key()
    return Secrets(
        ca=make_ca("kubernetes"),
        etcdCA=make_ca("etcd-ca"),
        frontProxyCA=make_ca("front-proxy-ca"),
        serviceAccount=KeyPair(
            cert=sa.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode(),
            key=_pem_key(sa),
        ),
        bootstrapToken=bootstrap_token(),
        vrrpPassword=vrrp_password(),
    )


class SecretStore:
    """Where one site's secrets live: `<site dir>/.nodekiln/<site>.secrets.yaml` (0600)."""

    def __init__(self, site_dir: Path, site_name: str):
        self.dir = site_dir / STORE_DIR
        self.path = self.dir / f"{site_name}.secrets.yaml"
        self.fingerprint_path = self.dir / f"{site_name}.fingerprint"
        self.site_name = site_name

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> Secrets:
        if not self.path.exists():
            if self.fingerprint_path.exists():
                raise SecretsError(
                    f"{self.path}: the secrets of site {self.site_name} are missing, but "
                    f"{self.fingerprint_path} says they were created: restore the file from your backup. "
                    f"Only for a site whose nodes are all gone: `invoke secrets --regenerate`."
                )
            raise SecretsError(f"{self.path}: no secrets yet for site {self.site_name}: run `invoke secrets`")
        mode = self.path.stat().st_mode & 0o777
        if mode & 0o077:
            raise SecretsError(
                f"{self.path}: mode {mode:04o} lets others read the site's keys: expected 0600 (chmod 600 it)"
            )
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8"))
            found = Secrets.model_validate(data)
            for pair in (found.ca, found.etcdCA, found.frontProxyCA):
                x509.load_pem_x509_certificate(pair.cert.encode())
                serialization.load_pem_private_key(pair.key.encode(), password=None)
        except (yaml.YAMLError, ValidationError, ValueError, TypeError, UnicodeDecodeError):
            # no exception text: it could quote key material
            raise SecretsError(
                f"{self.path}: the secrets file is corrupt (not the YAML nodekiln wrote): restore it from your backup"
            ) from None
        if self.fingerprint_path.exists():
            expected = self.fingerprint_path.read_text().split()[0]
            if expected != found.fingerprint():
                raise SecretsError(
                    f"{self.path}: holds a different cluster CA than {self.fingerprint_path} records: "
                    f"restore the matching secrets file"
                )
        return found

    def create(self, *, regenerate: bool = False) -> Secrets:
        """Make the secrets once. An existing or lost store is only replaced with `regenerate`."""
        if not regenerate and (self.path.exists() or self.fingerprint_path.exists()):
            raise SecretsError(
                f"{self.path}: secrets exist already for site {self.site_name}; nodekiln never replaces them silently (--regenerate does, for a site whose nodes are all gone)"
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o700)
        write_atomic(self.dir / ".gitignore", GITIGNORE)
        fresh = generate()
        write_atomic(self.path, yaml.safe_dump(fresh.model_dump(), sort_keys=True), mode=0o600)
        write_atomic(
            self.fingerprint_path,
            f"{fresh.fingerprint()}  sha256 of the cluster CA certificate of site {self.site_name}\n",
        )
        return fresh

    def named(self, name: str, factory: Callable[[], str]) -> str:
        """The extra secret `name`, made with `factory` and stored on first use.

        Adding a secret is not regenerating one: the existing ones are kept byte for byte.
        """
        current, _ = self.ensure()
        if name in current.extra:
            return current.extra[name]
        value = factory()
        updated = current.model_copy(update={"extra": {**current.extra, name: value}})
        write_atomic(self.path, yaml.safe_dump(updated.model_dump(), sort_keys=True), mode=0o600)
        return value

    def replace_named(self, name: str, value: str) -> None:
        """Store a new value for the extra secret `name` (a certificate nodekiln renews)."""
        current, _ = self.ensure()
        updated = current.model_copy(update={"extra": {**current.extra, name: value}})
        write_atomic(self.path, yaml.safe_dump(updated.model_dump(), sort_keys=True), mode=0o600)

    def ensure(self) -> tuple[Secrets, bool]:
        """The site's secrets, created on first use. Returns (secrets, created)."""
        if self.path.exists() or self.fingerprint_path.exists():
            return self.load(), False
        return self.create(), True


# ---------------------------------------------------------------------------------------------
# The builder key: signs what `build-image` and `build-iso` make (nodekiln/images/signing.py)

BUILDER_KEY_SUFFIX = "-builder.key"  # OpenSSH private key, 0600
BUILDER_PUB_SUFFIX = "-builder.pub"  # its public key: what a verifier trusts


class BuilderKeyFiles(BaseModel):
    """Where a site's builder key lives; `identity` is its principal in allowed_signers."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    private: Path
    public: Path
    identity: str

    def __repr__(self) -> str:
        return f"BuilderKeyFiles(public={self.public}, identity={self.identity})"


def make_builder_key(comment: str) -> tuple[str, str]:
    """A fresh ed25519 key pair as OpenSSH writes it: (private key file, public key line)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}\n"


def builder_key_files(site_dir: Path, site_name: str) -> BuilderKeyFiles:
    store = site_dir / STORE_DIR
    return BuilderKeyFiles(
        private=store / f"{site_name}{BUILDER_KEY_SUFFIX}",
        public=store / f"{site_name}{BUILDER_PUB_SUFFIX}",
        identity=f"nodekiln-builder@{site_name}",
    )


def ensure_builder_key(site_dir: Path, site_name: str) -> tuple[BuilderKeyFiles, bool]:
    """The site's builder key, made once (0600; the public key beside it). Returns (files, created).

    A public key without its private key is an error, as a lost secrets store is: artifacts
    signed with it verify only against that public key, so a quiet new key would split them.
    """
    files = builder_key_files(site_dir, site_name)
    if files.private.exists():
        mode = files.private.stat().st_mode & 0o777
        if mode & 0o077:
            raise SecretsError(
                f"{files.private}: mode {mode:04o} lets others read the site's builder key: expected 0600 (chmod 600 it)"
            )
        if not files.public.exists():
            raise SecretsError(
                f"{files.public}: the builder's public key is missing beside {files.private}: restore it"
            )
        return files, False
    if files.public.exists():
        raise SecretsError(
            f"{files.private}: the builder key of site {site_name} is missing, but {files.public} says it was "
            f"created: restore it from your backup (artifacts it signed verify only against that key)"
        )
    files.private.parent.mkdir(parents=True, exist_ok=True)
    files.private.parent.chmod(0o700)
    if not (files.private.parent / ".gitignore").exists():
        write_atomic(files.private.parent / ".gitignore", GITIGNORE)
    private, public = make_builder_key(files.identity)
    write_atomic(files.private, private, mode=0o600)
    write_atomic(files.public, public)
    return files, True
