"""Join tokens for nodes added to a running cluster: a bootstrap-token Secret created through the API.

`kubeadm init` makes the site's stored token (secrets.bootstrapToken) from the rendered
InitConfiguration (bootstrap/kubeadm-init.yaml.j2) with `ttl: kubernetes.bootstrapTokenTTL`;
once that has passed, the token is gone and a node booted later fails discovery. kubeadm's own
way in is another bootstrap token, which is nothing but a Secret of a fixed shape in
kube-system (what `kubeadm token create` writes). nodekiln creates that Secret directly with the
admin client certificate the site CA signs, so no node has to be reached over SSH.

The fresh token is not stored: it serves the nodes of one deploy and expires by itself. It is
never printed or logged, and it never appears in an error message.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from nodekiln.bootstrap.kubeconfig import ADMIN_GROUP
from nodekiln.config.model import DURATION
from nodekiln.errors import NodekilnError
from nodekiln.secrets import bootstrap_token, make_client_cert

if TYPE_CHECKING:
    from nodekiln.config.site import Site
    from nodekiln.secrets import Secrets

# The bootstrap-token Secret, as kubernetes/cluster-bootstrap token/api/types.go defines it:
# name "bootstrap-token-<token-id>" in kube-system, type "bootstrap.kubernetes.io/token".
SECRET_NAMESPACE = "kube-system"
SECRET_TYPE = "bootstrap.kubernetes.io/token"
SECRET_PREFIX = "bootstrap-token-"
TOKEN_ID = re.compile(r"^[a-z0-9]{6}$")  # token/api/types.go BootstrapTokenIDPattern
TOKEN_SECRET = re.compile(r"^[a-z0-9]{16}$")  # token/api/types.go BootstrapTokenSecretPattern
TOKEN = re.compile(r"^([a-z0-9]{6})\.([a-z0-9]{16})$")  # token/api/types.go BootstrapTokenPattern
# kubeadm binds its join RBAC (may post a CSR, CSRs auto-approved, read kubeadm-config) to this
# group, not to system:bootstrappers: kubernetes/kubernetes cmd/kubeadm/app/phases/bootstraptoken/
# node/tlsbootstrap.go, constants.NodeBootstrapTokenAuthGroup. Without it a node passes discovery
# and then cannot post its CSR.
NODE_BOOTSTRAP_GROUP = "system:bootstrappers:kubeadm:default-node-token"
# Time a node added later needs from its server create to `kubeadm join`: boot, cloud-init,
# image pulls are all in the image. A token closer than this to its end is treated as gone.
JOIN_MARGIN = dt.timedelta(hours=1)
_CLIENT_USER = "nodekiln-join-token"


class JoinTokenError(NodekilnError):
    """A join token could not be created through the API; the message never holds a token."""


class APIUnreachableError(JoinTokenError):
    """No TLS connection to the API from this host (refused, timed out, no route)."""


def parse_ttl(text: str) -> dt.timedelta:
    """kubernetes.bootstrapTokenTTL ("24h", "2h30m", "90m", "0s") as a timedelta."""
    match = DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"expected a duration like 24h or 2h30m, got {text!r}")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return dt.timedelta(hours=hours, minutes=minutes, seconds=seconds)


def needs_fresh_token(
    init_created: dt.datetime | None, now: dt.datetime, ttl: dt.timedelta, margin: dt.timedelta = JOIN_MARGIN
) -> bool:
    """Whether nodes created `now` must get a fresh token instead of the one `kubeadm init` made.

    `init_created` is when the init node's server was created: `kubeadm init` runs minutes
    later, so the stored token expires no earlier than init_created + ttl and this errs on the
    side of a fresh token. Unknown creation time: a fresh token too. A TTL of 0 is a token that
    never expires (`kubeadm token create --ttl`: "If set to '0', the token will never expire").
    """
    if ttl <= dt.timedelta(0):
        return False
    if init_created is None:
        return True
    return now >= init_created + ttl - margin


def new_token() -> str:
    """A fresh `<id>.<secret>` token (the same generator as the stored one)."""
    return bootstrap_token()


def rfc3339(moment: dt.datetime) -> str:
    """Absolute UTC time as the bootstrap-token `expiration` takes it, e.g. 2030-01-01T00:00:00Z."""
    if moment.tzinfo is None:
        raise ValueError("a naive datetime: pass an aware one (UTC)")
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def token_secret(token: str, ttl: dt.timedelta, now: dt.datetime, site_name: str) -> dict[str, object]:
    """The bootstrap-token Secret of `token` valid for `ttl` from `now` (cluster-bootstrap token/api/types.go)."""
    match = TOKEN.fullmatch(token)
    if match is None:
        raise ValueError("not a bootstrap token of the form [a-z0-9]{6}.[a-z0-9]{16}")
    if ttl <= dt.timedelta(0):
        raise ValueError("a join token needs a positive lifetime (nodekiln never mints one that does not expire)")
    token_id, secret = match.groups()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SECRET_PREFIX + token_id, "namespace": SECRET_NAMESPACE},
        "type": SECRET_TYPE,
        "stringData": {
            "description": f"nodekiln: joins the nodes site-deploy adds to site {site_name}",
            "token-id": token_id,
            "token-secret": secret,
            "expiration": rfc3339(now + ttl),
            # authentication: the node authenticates with it for its CSR; signing: the
            # bootstrapsigner controller signs kube-public/cluster-info with it
            # (jws-kubeconfig-<id>), which is what token discovery checks.
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": NODE_BOOTSTRAP_GROUP,
        },
    }


def api_url(site: Site, address: str) -> str:
    return f"https://{address}:{site.endpoint_port}"


def _client_context(secrets: Secrets) -> ssl.SSLContext:
    """TLS to the site's API: server verified against the site CA, admin client certificate.

    check_hostname is off as in deploy._wait_healthz: the address may be a floating IP that is
    not in the API server certificate's SANs; the chain to the site CA is still verified.
    """
    context = ssl.create_default_context(cadata=secrets.ca.cert)
    context.check_hostname = False
    # A short-lived admin certificate (group kubeadm:cluster-admins, bound to cluster-admin by
    # kubeadm >= 1.29), as nodekiln.bootstrap.kubeconfig.admin_kubeconfig signs it.
    client = make_client_cert(secrets.ca, _CLIENT_USER, ADMIN_GROUP, 1)
    # ssl reads a certificate chain from files only: a 0600 file in a 0700 folder, gone as soon
    # as it is loaded.
    with tempfile.TemporaryDirectory(prefix="nodekiln-jointoken-") as folder:
        path = Path(folder) / "client.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(client.cert + client.key)
        context.load_cert_chain(path)
    return context


def _scrub(text: str, token: str) -> str:
    secret = token.split(".")[1]
    return text.replace(token, "<token>").replace(secret, "<token-secret>")


def create_join_token(
    site: Site, secrets: Secrets, address: str, ttl: dt.timedelta, now: dt.datetime, timeout: float = 15.0
) -> str:
    """Create a fresh bootstrap token in the cluster through the API at `address`; returns `<id>.<secret>`."""
    token = new_token()
    body = json.dumps(token_secret(token, ttl, now, site.name)).encode()
    url = f"{api_url(site, address)}/api/v1/namespaces/{SECRET_NAMESPACE}/secrets"
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "Accept": "application/json"}
    )
    # Straight to the address, never through an HTTPS_PROXY: the admin certificate is for the site's API alone.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=_client_context(secrets))
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            status = response.status
            answer = response.read()
    except urllib.error.HTTPError as exc:
        status, answer = exc.code, exc.read()
    except (OSError, ssl.SSLError) as exc:  # URLError, refused, timeout, certificate not from the site CA
        reason = getattr(exc, "reason", None) or exc
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise JoinTokenError(
                f"the API at {url} is not the site's: its certificate is not signed by the site CA "
                f"({reason.verify_message})"
            ) from None
        raise APIUnreachableError(
            f"the API at {url} could not be reached from here: {_scrub(str(reason), token)}"
        ) from None
    if status != 201:
        try:
            message = str(json.loads(answer).get("message") or "")
        except (ValueError, AttributeError):
            message = answer[:200].decode(errors="replace")
        raise JoinTokenError(
            f"the API at {url} refused the join token's Secret: HTTP {status}: {_scrub(message, token) or 'no message'}"
        )
    return token


__all__ = [
    "JOIN_MARGIN",
    "APIUnreachableError",
    "JoinTokenError",
    "create_join_token",
    "needs_fresh_token",
    "new_token",
    "parse_ttl",
    "token_secret",
]
