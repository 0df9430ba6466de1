"""Base model of every site-file section (strict, camelCase, unknown fields rejected) and the
patterns more than one section uses."""

import re

from pydantic import BaseModel, ConfigDict

# Kubernetes' IsDNS1123Label (k8s.io/apimachinery/pkg/util/validation): names, namespaces.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Label keys and values (IsQualifiedName, IsValidLabelValue in the same package).
LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
# Go's time.ParseDuration, restricted to hours, minutes and seconds (kubeadm's token TTL, helm's --timeout).
# The groups are the hours, minutes and seconds (bootstrap/jointoken.py reads them).
DURATION = re.compile(r"^(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
