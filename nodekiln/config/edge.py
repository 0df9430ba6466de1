"""The site's `edge` section: the public load balancer in front of the cluster's ingress.

edge:
  domains: [naavre.example.org]       # one certificate for all of them (HTTP-01)
  acme:
    directory: letsencrypt            # letsencrypt | letsencrypt-staging | any RFC 8555 URL
    email: ops@example.org
  nodes:                              # one, or two that share `vip` through keepalived
    - {name: edge01, address: 10.0.1.20}
    - {name: edge02, address: 10.0.1.21}
  vip: 10.0.1.129
  backups:                            # another cluster's ingress, used when all workers are down
    - {name: other01, address: 10.0.2.46, port: 443}
  backupCAFile: other-cluster-ca.pem  # PEM beside the site file: the CA their ingress serves from

The edge nodes boot the node image; nothing of Kubernetes starts there (nodekiln/edge/).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Annotated

from pydantic import Field, field_validator

from nodekiln.config.model import DNS_LABEL, Strict

# RFC 8555 directories of Let's Encrypt (letsencrypt.org/docs/acme-protocol-updates,
# letsencrypt.org/docs/staging-environment).
ACME_DIRECTORIES = {
    "letsencrypt": "https://acme-v02.api.letsencrypt.org/directory",
    "letsencrypt-staging": "https://acme-staging-v02.api.letsencrypt.org/directory",
}
# A public DNS name: labels of RFC 1123, at least two, no trailing dot, at most 253 characters.
# Let's Encrypt issues HTTP-01 certificates for such names only (no wildcards: those need DNS-01).
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
EMAIL = re.compile(r"^[^@\s]+@([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+[a-z]{2,}$", re.IGNORECASE)
HOST = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9.]{0,251}[A-Za-z0-9])?$")

DnsLabel = Annotated[
    str, Field(pattern=DNS_LABEL.pattern, description="DNS-1123 label: lower-case letters, digits and '-', at most 63")
]


class Acme(Strict):
    directory: str = Field(
        default="letsencrypt",
        description="ACME directory: letsencrypt (production), letsencrypt-staging, or an https:// RFC 8555 URL",
    )
    email: str = Field(description="contact for the ACME account (expiry notices)")
    caFile: str | None = Field(
        default=None,
        description="PEM file beside the site file that signs the ACME server's own HTTPS (a private ACME server)",
    )

    @field_validator("directory")
    @classmethod
    def _directory(cls, value: str) -> str:
        if value in ACME_DIRECTORIES or re.fullmatch(r"https://[^\s/]+(/\S*)?", value):
            return value
        raise ValueError(f"expected {', '.join(ACME_DIRECTORIES)} or an https:// URL, got {value!r}")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        if not EMAIL.fullmatch(value):
            raise ValueError(f"expected an e-mail address like ops@example.org, got {value!r}")
        return value

    @property
    def url(self) -> str:
        return ACME_DIRECTORIES.get(self.directory, self.directory)


class EdgeNode(Strict):
    name: DnsLabel
    address: IPv4Address
    mac: str | None = Field(
        default=None, pattern=r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$", description="match the NIC by MAC instead of by name"
    )


class BackupServer(Strict):
    name: DnsLabel
    address: str = Field(description="address or DNS name of the other cluster's ingress (or its edge)")
    port: int = Field(default=443, ge=1, le=65535)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        if not HOST.fullmatch(value):
            raise ValueError(f"expected an IPv4 address or a DNS name, got {value!r}")
        return value


class Edge(Strict):
    domains: list[str] = Field(min_length=1, description="public names served; one certificate covers them all")
    acme: Acme
    nodes: list[EdgeNode] = Field(min_length=1, max_length=2, description="one edge node, or two sharing `vip`")
    vip: IPv4Address | None = Field(default=None, description="the address the pair shares (two nodes only)")
    virtualRouterId: int = Field(default=52, ge=1, le=255, description="VRRP id of the pair's VIP")
    backendPort: int | None = Field(
        default=None,
        ge=30000,
        le=32767,
        description="the ingress's HTTPS NodePort on every worker (default: addons.ingress.nodePorts.https)",
    )
    backups: list[BackupServer] = Field(
        default_factory=list, description="another cluster's HTTPS endpoints, used when every worker is down"
    )
    backupCAFile: str | None = Field(
        default=None, description="PEM file beside the site file: the CA(s) the backup servers' certificates chain to"
    )

    @field_validator("domains")
    @classmethod
    def _domains(cls, domains: list[str]) -> list[str]:
        for name in domains:
            if name.startswith("*."):
                raise ValueError(f"{name!r}: wildcard names need the DNS-01 challenge; HTTP-01 issues exact names only")
            if not DOMAIN.fullmatch(name):
                raise ValueError(f"{name!r} is not a DNS name like naavre.example.org (lower case, no trailing dot)")
        repeated = sorted({n for n in domains if domains.count(n) > 1})
        if repeated:
            raise ValueError(f"{', '.join(repeated)} listed more than once")
        return domains
