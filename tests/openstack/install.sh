#!/usr/bin/env bash
# Install the real OpenStack services (Keystone, Glance, Neutron, Placement, Nova) that the slow
# tests and `invoke bench` run nodekiln against, into one virtualenv. Idempotent and cached: a
# stamp of this script, the constraints and the test ML2 driver skips the install when nothing
# changed (about 0.1 s); a fresh install takes about 75 s on 2 cores.
#   NODEKILN_OPENSTACK_VENV  where (default /opt/nodekiln-openstack/venv)
#   PYTHON                   the interpreter (default python3; 3.11 is what was measured)
# Debian packages (also listed in tests/host-packages.txt): mariadb-server rabbitmq-server.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
venv=${NODEKILN_OPENSTACK_VENV:-/opt/nodekiln-openstack/venv}
python=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1

missing=()
for pkg in mariadb-server rabbitmq-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Both start their system services on install where they can; the tests start their own.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/tmp/nodekiln-openstack-apt.log 2>&1 \
    || { tail -30 /tmp/nodekiln-openstack-apt.log; exit 1; }
fi

want=$(cat "$here/install.sh" "$here/constraints.txt" "$here/nodekiln_fake_binding/pyproject.toml" \
  "$here/nodekiln_fake_binding/src/nodekiln_fake_binding/__init__.py" | sha256sum | cut -d' ' -f1)
if [ -f "$venv/.nodekiln-stamp" ] && [ "$(cat "$venv/.nodekiln-stamp")" = "$want" ]; then
  echo "openstack: services already installed in $venv"
  exit 0
fi

started=$SECONDS
rm -rf "$venv"
"$python" -m venv "$venv"
# One shared venv: the five services' pinned releases resolve together (measured).
"$venv/bin/pip" install -q -c "$here/constraints.txt" \
  keystone glance neutron nova openstack-placement gunicorn PyMySQL "$here/nodekiln_fake_binding" 2>&1 \
  | grep -v "^WARNING: Location" || true
PYTHONWARNINGS=ignore "$venv/bin/python" -c "import keystone, glance, neutron, nova, placement, nodekiln_fake_binding" \
  || { echo "openstack: the install in $venv is incomplete" >&2; exit 1; }
echo "$want" > "$venv/.nodekiln-stamp"
echo "openstack: services installed in $venv ($((SECONDS - started)) s)"
