"""Admin kubeconfig signed by the site CA, so nobody has to SSH to a node for one."""

from __future__ import annotations

import base64

import yaml

from nodekiln.config.site import Site
from nodekiln.secrets import Secrets, make_client_cert

# kubeadm (1.29+) binds this group to cluster-admin; unlike system:masters it can be revoked.
ADMIN_GROUP = "kubeadm:cluster-admins"


def admin_kubeconfig(site: Site, secrets: Secrets, days: int = 365, user: str = "nodekiln-admin") -> str:
    client = make_client_cert(secrets.ca, user, ADMIN_GROUP, days)
    context = f"{user}@{site.name}"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": site.name,
                "cluster": {"server": f"https://{site.endpoint}", "certificate-authority-data": _b64(secrets.ca.cert)},
            }
        ],
        "users": [
            {
                "name": f"{user}@{site.name}",
                "user": {"client-certificate-data": _b64(client.cert), "client-key-data": _b64(client.key)},
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": site.name, "user": f"{user}@{site.name}"}}],
        "current-context": context,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()
