"""A real, throw-away OpenStack on 127.0.0.1 for tests and benchmarks.

Keystone, Glance, Neutron, Placement and Nova (fake virt driver) from PyPI, installed once by
`tests/openstack/install.sh` into one virtualenv (default /opt/nodekiln-openstack/venv), with
MariaDB and RabbitMQ from Debian. Every start gets fresh databases and a fresh work directory;
everything listens on loopback only (MariaDB on a Unix socket alone). `DevCloud.start()` writes
a clouds.yaml with two clouds: `nodekiln-admin` (the operator) and `nodekiln` (a member of its
own project, as a user of a research cloud is).

What was learnt bringing it up is in `../shared/openstack-local.md`; the parts that matter are
commented where they are done.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import yaml

from nodekiln import run
from nodekiln.errors import NodekilnError

VENV = Path(os.environ.get("NODEKILN_OPENSTACK_VENV", "/opt/nodekiln-openstack/venv"))
INSTALL_HINT = "bash tests/openstack/install.sh"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's /usr/sbin wrapper su's to rabbitmq
ADMIN_PASSWORD = "nodekiln-admin"
USER_PASSWORD = "nodekiln-user"
SERVICE_PASSWORD = "nodekiln-service"
REGION = "RegionOne"
DATABASES = ("keystone", "glance", "neutron", "placement", "nova_api", "nova", "nova_cell0")


class DevCloudError(NodekilnError):
    """The local test cloud could not be started."""


def available(venv: Path = VENV) -> str | None:
    """None when the local cloud can start here, else why not (one line)."""
    if not (venv / "bin" / "keystone-manage").exists():
        return f"the OpenStack services are not installed in {venv}: run {INSTALL_HINT}"
    for tool in ("mariadbd", "mariadb-install-db"):
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/usr/bin") is None:
            return f"{tool} is missing: apt-get install -y mariadb-server"
    if not Path(RABBITMQ_SERVER).exists():
        return "rabbitmq-server is missing: apt-get install -y rabbitmq-server"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Service:
    """A background program of the cloud and its log."""

    name: str
    popen: subprocess.Popen[str]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 25) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return []


def _wait(
    what: str, check: Callable[[], bool], timeout: float, proc: Service | None = None, interval: float = 0.25
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise DevCloudError(f"{what} exited early; last lines of {proc.log}:\n" + "\n".join(proc.tail()))
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(interval)
    tail = "\n".join(proc.tail()) if proc is not None else ""
    raise DevCloudError(
        f"{what} was not ready within {timeout:.0f} s" + (f"; last lines of {proc.log}:\n{tail}" if tail else "")
    )


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status < 500
    except urllib.error.HTTPError as exc:  # 300 Multiple Choices, 401: the service answers
        return exc.code < 500


def _ini(sections: dict[str, dict[str, object]]) -> str:
    out = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {v}" for k, v in values.items())
        out.append("")
    return "\n".join(out)


@dataclass
class DevCloud:
    """One running local cloud. Use as a context manager, or call start() and stop()."""

    workdir: Path | None = None
    venv: Path = VENV
    timings: dict[str, float] = field(default_factory=dict)
    processes: list[Service] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    _own_workdir: bool = False

    # -- paths -----------------------------------------------------------------------------
    @property
    def clouds_yaml(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "clouds.yaml"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use these clouds: OS_CLIENT_CONFIG_FILE."""
        return {"OS_CLIENT_CONFIG_FILE": str(self.clouds_yaml)}

    def _bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def _db_url(self, name: str) -> str:
        assert self.workdir is not None
        return f"mysql+pymysql://root@localhost/{name}?unix_socket={self.workdir / 'mysql.sock'}&charset=utf8"

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def attach(cls, clouds_yaml: Path) -> DevCloud:
        """A cloud another process started (NODEKILN_DEVCLOUD=<its clouds.yaml>): used, never stopped."""
        if not clouds_yaml.exists():
            raise DevCloudError(f"NODEKILN_DEVCLOUD: {clouds_yaml} does not exist")
        return cls(workdir=clouds_yaml.parent)

    def __enter__(self) -> DevCloud:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> DevCloud:
        reason = available(self.venv)
        if reason:
            raise DevCloudError(reason)
        if self.workdir is None:
            # Short path: Unix socket paths are limited to 107 bytes.
            self.workdir = Path(tempfile.mkdtemp(prefix="nk-os-"))
            self._own_workdir = True
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        for name in ("keystone", "glance", "neutron", "placement", "nova", "rabbit", "mysql"):
            self.ports[name] = _free_port()
        try:
            self._timed("mariadb", self._start_mariadb)
            self._timed("rabbitmq", self._start_rabbitmq)
            self._timed("keystone", self._start_keystone)
            self._timed("catalog", self._register_services)
            self._timed("glance+placement+neutron", self._start_glance_placement_neutron)
            self._timed("nova", self._start_nova)
            self._timed("project", self._create_project)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        # All at once: each may take its TERM grace period (nova-compute, RabbitMQ do).
        try:
            with ThreadPoolExecutor(max_workers=max(1, len(self.processes))) as pool:
                list(pool.map(lambda proc: run.stop(proc.popen), self.processes))
        except RuntimeError:  # at interpreter exit (atexit) no new threads: one after the other
            for proc in self.processes:
                run.stop(proc.popen)
        self.processes.clear()
        if self._own_workdir and self.workdir is not None and not os.environ.get("NODEKILN_KEEP_DEVCLOUD"):
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _timed(self, name: str, step: Callable[[], None]) -> None:
        started = time.monotonic()
        step()
        self.timings[name] = round(time.monotonic() - started, 1)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Service:
        assert self.workdir is not None
        log = self.workdir / "logs" / f"{name}.log"
        proc = Service(name, run.spawn(argv, log=log, cwd=self.workdir, env=env), log)
        self.processes.append(proc)
        return proc

    def _manage(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        assert self.workdir is not None
        try:
            run.run(argv, log=self.workdir / "logs" / f"{name}.log", env=env, capture=False, timeout=600)
        except NodekilnError as exc:
            raise DevCloudError(f"{name} failed: {exc}") from None

    # -- infrastructure --------------------------------------------------------------------
    def _start_mariadb(self) -> None:
        assert self.workdir is not None
        data = self.workdir / "mysql"
        self._manage(
            "mariadb-install-db",
            [
                "mariadb-install-db",
                "--no-defaults",
                f"--datadir={data}",
                "--user=root",
                "--skip-test-db",
                "--auth-root-authentication-method=normal",
            ],
        )
        sock = self.workdir / "mysql.sock"
        # Unix socket only, no grant tables: a throw-away database that nothing else can reach.
        proc = self._spawn(
            "mariadb",
            [
                "mariadbd",
                "--no-defaults",
                f"--datadir={data}",
                f"--socket={sock}",
                "--skip-networking",
                "--skip-grant-tables",
                "--user=root",
                f"--pid-file={self.workdir / 'mysql.pid'}",
                "--max-connections=1000",
                "--innodb-buffer-pool-size=128M",
                "--innodb-flush-log-at-trx-commit=0",
                "--skip-log-bin",
                "--character-set-server=utf8mb3",
                "--collation-server=utf8mb3_general_ci",
            ],
        )
        _wait("mariadb", sock.exists, 60, proc)
        ping = ["mariadb-admin", "--no-defaults", f"--socket={sock}", "ping"]
        _wait("mariadb", lambda: run.run(ping, check=False).returncode == 0, 60, proc)
        sql = "".join(f"CREATE DATABASE {name};" for name in DATABASES)
        self._manage("mariadb-databases", ["mariadb", "--no-defaults", f"--socket={sock}", "-e", sql])

    def _start_rabbitmq(self) -> None:
        assert self.workdir is not None
        base = self.workdir / "rabbit"
        base.mkdir()
        (base / "enabled_plugins").write_text("[].\n")
        port = self.ports["rabbit"]
        # Our own epmd (Erlang's port mapper) on a free loopback port: Erlang would otherwise
        # start a shared daemon on 4369 that outlives the cloud.
        epmd_port = _free_port()
        epmd = self._spawn("epmd", ["epmd", "-address", "127.0.0.1", "-port", str(epmd_port)])
        _wait("epmd", lambda: _port_open(epmd_port), 30, epmd)
        env = {
            "HOME": str(base),  # .erlang.cookie
            "RABBITMQ_NODENAME": f"nodekiln{port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_EPMD_PORT": str(epmd_port),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
        }
        proc = self._spawn("rabbitmq", [RABBITMQ_SERVER], env=env)
        _wait("rabbitmq", lambda: _port_open(port), 90, proc)

    def _authtoken(self, user: str) -> dict[str, object]:
        keystone = f"http://127.0.0.1:{self.ports['keystone']}/v3"
        return {
            "www_authenticate_uri": keystone,
            "auth_url": keystone,
            "auth_type": "password",
            "project_domain_name": "Default",
            "user_domain_name": "Default",
            "project_name": "service",
            "username": user,
            "password": SERVICE_PASSWORD,
            "region_name": REGION,
        }

    POLICY: ClassVar[dict[str, str]] = {"enforce_new_defaults": "false", "enforce_scope": "false"}

    def _serve(self, name: str, module: str, port: int, env: dict[str, str], threads: int = 4) -> Service:
        """Serve a WSGI app with gunicorn through a shim that clears sys.argv (apps parse argv)."""
        assert self.workdir is not None
        shim = self.workdir / f"wsgi_{name}.py"
        shim.write_text(f"import sys\nsys.argv = sys.argv[:1]\nfrom {module} import application  # noqa: E402,F401\n")
        return self._spawn(
            name,
            [
                self._bin("gunicorn"),
                "--no-control-socket",
                "-w",
                "1",
                "--threads",
                str(threads),
                "-b",
                f"127.0.0.1:{port}",
                "--timeout",
                "300",
                "--keep-alive",
                "75",
                "--chdir",
                str(self.workdir),
                f"wsgi_{name}:application",
            ],
            env=env,
        )

    def _start_keystone(self) -> None:
        assert self.workdir is not None
        conf_dir = self.workdir / "keystone"
        conf_dir.mkdir()
        conf = conf_dir / "keystone.conf"
        conf.write_text(
            _ini(
                {
                    "DEFAULT": {"log_file": self.workdir / "logs" / "keystone-app.log"},
                    "database": {"connection": self._db_url("keystone")},
                    "token": {"provider": "fernet"},
                    "fernet_tokens": {"key_repository": conf_dir / "fernet-keys"},
                    "credential": {"key_repository": conf_dir / "credential-keys"},
                    "oslo_policy": self.POLICY,
                }
            )
        )
        manage = [self._bin("keystone-manage"), "--config-file", str(conf)]
        self._manage("keystone-db_sync", [*manage, "db_sync"])
        self._manage(
            "keystone-fernet_setup", [*manage, "fernet_setup", "--keystone-user", "root", "--keystone-group", "root"]
        )
        self._manage(
            "keystone-credential_setup",
            [*manage, "credential_setup", "--keystone-user", "root", "--keystone-group", "root"],
        )
        url = f"http://127.0.0.1:{self.ports['keystone']}/v3"
        self._manage(
            "keystone-bootstrap",
            [
                *manage,
                "bootstrap",
                "--bootstrap-password",
                ADMIN_PASSWORD,
                "--bootstrap-admin-url",
                url,
                "--bootstrap-public-url",
                url,
                "--bootstrap-internal-url",
                url,
                "--bootstrap-region-id",
                REGION,
            ],
        )
        proc = self._serve(
            "keystone", "keystone.wsgi.api", self.ports["keystone"], {"OS_KEYSTONE_CONFIG_FILES": str(conf)}
        )
        _wait("keystone", lambda: _http_ok(url), 120, proc)
        self._write_clouds_yaml()

    def _write_clouds_yaml(self) -> None:
        auth_url = f"http://127.0.0.1:{self.ports['keystone']}/v3"
        common = {"region_name": REGION, "identity_api_version": 3, "interface": "public"}
        clouds = {
            "clouds": {
                "nodekiln-admin": {
                    **common,
                    "auth": {
                        "auth_url": auth_url,
                        "username": "admin",
                        "password": ADMIN_PASSWORD,
                        "project_name": "admin",
                        "user_domain_name": "Default",
                        "project_domain_name": "Default",
                    },
                },
                "nodekiln": {
                    **common,
                    "auth": {
                        "auth_url": auth_url,
                        "username": "nodekiln",
                        "password": USER_PASSWORD,
                        "project_name": "nodekiln",
                        "user_domain_name": "Default",
                        "project_domain_name": "Default",
                    },
                },
            }
        }
        self.clouds_yaml.write_text(yaml.safe_dump(clouds, sort_keys=False))

    def connect(self, cloud: str = "nodekiln"):
        """An openstacksdk connection to one of this cloud's two clouds.yaml entries."""
        import openstack.config
        from openstack import connection

        config = openstack.config.OpenStackConfig(config_files=[str(self.clouds_yaml)])
        return connection.Connection(config=config.get_one(cloud=cloud))

    def _register_services(self) -> None:
        conn = self.connect("nodekiln-admin")
        ident = conn.identity
        service_project = ident.create_project(name="service", domain_id="default")
        service_role = ident.find_role("service") or ident.create_role(name="service")  # keystone 26+ bootstraps it
        admin_role = ident.find_role("admin")
        for user in ("glance", "neutron", "placement", "nova"):
            created = ident.create_user(
                name=user, password=SERVICE_PASSWORD, domain_id="default", default_project_id=service_project.id
            )
            for role in (admin_role, service_role):
                conn.identity.assign_project_role_to_user(service_project, created, role)
        catalog = {
            "glance": ("image", f"http://127.0.0.1:{self.ports['glance']}"),
            "neutron": ("network", f"http://127.0.0.1:{self.ports['neutron']}"),
            "placement": ("placement", f"http://127.0.0.1:{self.ports['placement']}"),
            "nova": ("compute", f"http://127.0.0.1:{self.ports['nova']}/v2.1"),
        }
        for name, (kind, url) in catalog.items():
            service = ident.create_service(name=name, type=kind)
            for interface in ("public", "internal", "admin"):
                ident.create_endpoint(service_id=service.id, interface=interface, url=url, region_id=REGION)

    def _start_glance_placement_neutron(self) -> None:
        """Set up three services' databases, then start them together (they do not depend on each other)."""
        assert self.workdir is not None
        share = self.venv / "etc"
        # Glance: file store backend, staging and tasks stores, keystone paste flavor.
        glance = self.workdir / "glance"
        glance.mkdir()
        shutil.copy(share / "glance" / "glance-api-paste.ini", glance / "glance-api-paste.ini")
        (glance / "glance-api.conf").write_text(
            _ini(
                {
                    "DEFAULT": {
                        "enabled_backends": "fs:file",
                        "worker_self_reference_url": f"http://127.0.0.1:{self.ports['glance']}",
                        "log_file": self.workdir / "logs" / "glance-app.log",
                    },
                    "database": {"connection": self._db_url("glance")},
                    "glance_store": {"default_backend": "fs"},
                    "fs": {"filesystem_store_datadir": glance / "images"},
                    "os_glance_staging_store": {"filesystem_store_datadir": glance / "staging"},
                    "os_glance_tasks_store": {"filesystem_store_datadir": glance / "tasks"},
                    "paste_deploy": {"flavor": "keystone"},
                    "keystone_authtoken": self._authtoken("glance"),
                    "oslo_policy": self.POLICY,
                }
            )
        )
        self._manage("glance-db_sync", [self._bin("glance-manage"), "--config-dir", str(glance), "db_sync"])

        placement = self.workdir / "placement"
        placement.mkdir()
        (placement / "placement.conf").write_text(
            _ini(
                {
                    "DEFAULT": {"log_file": self.workdir / "logs" / "placement-app.log"},
                    "placement_database": {"connection": self._db_url("placement")},
                    "api": {"auth_strategy": "keystone"},
                    "keystone_authtoken": self._authtoken("placement"),
                    "oslo_policy": self.POLICY,
                }
            )
        )
        self._manage("placement-db_sync", [self._bin("placement-manage"), "--config-dir", str(placement), "db", "sync"])

        neutron = self.workdir / "neutron"
        (neutron / "plugins" / "ml2").mkdir(parents=True)
        shutil.copy(share / "neutron" / "api-paste.ini", neutron / "api-paste.ini")
        (neutron / "neutron.conf").write_text(
            _ini(
                {
                    "DEFAULT": {
                        "core_plugin": "ml2",
                        "service_plugins": "router",
                        "auth_strategy": "keystone",
                        "transport_url": "fake://",
                        "notify_nova_on_port_status_changes": "false",
                        "notify_nova_on_port_data_changes": "false",
                        "api_paste_config": neutron / "api-paste.ini",
                        "log_file": self.workdir / "logs" / "neutron-app.log",
                        "state_path": neutron,
                    },
                    "database": {"connection": self._db_url("neutron")},
                    "keystone_authtoken": self._authtoken("neutron"),
                    "oslo_concurrency": {"lock_path": neutron / "lock"},
                    "oslo_policy": self.POLICY,
                }
            )
        )
        (neutron / "plugins" / "ml2" / "ml2_conf.ini").write_text(
            _ini(
                {
                    # nodekiln_fake (tests/openstack/nodekiln_fake_binding) binds every port, so Nova boots.
                    "ml2": {
                        "type_drivers": "flat,vxlan",
                        "tenant_network_types": "vxlan",
                        "mechanism_drivers": "nodekiln_fake",
                        "extension_drivers": "port_security",
                    },
                    "ml2_type_vxlan": {"vni_ranges": "1:1000"},
                    "ml2_type_flat": {"flat_networks": "*"},
                }
            )
        )
        # Neutron's migrations do not run on SQLite and are slow everywhere: create the schema
        # from the models and stamp it as current.
        script = self.workdir / "neutron_schema.py"
        script.write_text(
            textwrap.dedent(f"""
            import sqlalchemy
            from neutron.db.migration.models import head
            engine = sqlalchemy.create_engine({self._db_url("neutron")!r})
            head.get_metadata().create_all(engine)
        """)
        )
        self._manage("neutron-schema", [self._bin("python"), str(script)])
        self._manage(
            "neutron-stamp",
            [
                self._bin("neutron-db-manage"),
                "--config-file",
                str(neutron / "neutron.conf"),
                "--config-file",
                str(neutron / "plugins" / "ml2" / "ml2_conf.ini"),
                "stamp",
                "heads",
            ],
        )

        procs = {
            "glance": self._serve(
                "glance", "glance.wsgi.api", self.ports["glance"], {"OS_GLANCE_CONFIG_DIR": str(glance)}
            ),
            "placement": self._serve(
                "placement", "placement.wsgi.api", self.ports["placement"], {"OS_PLACEMENT_CONFIG_DIR": str(placement)}
            ),
            "neutron": self._serve(
                "neutron", "neutron.wsgi.api", self.ports["neutron"], {"OS_NEUTRON_CONFIG_DIR": str(neutron)}
            ),
        }
        for name, proc in procs.items():
            _wait(name, lambda name=name: _http_ok(f"http://127.0.0.1:{self.ports[name]}/"), 120, proc)

    def _start_nova(self) -> None:
        assert self.workdir is not None
        nova = self.workdir / "nova"
        nova.mkdir()
        shutil.copy(self.venv / "etc" / "nova" / "api-paste.ini", nova / "api-paste.ini")
        keystone = f"http://127.0.0.1:{self.ports['keystone']}/v3"
        client = {
            "auth_url": keystone,
            "auth_type": "password",
            "project_domain_name": "Default",
            "user_domain_name": "Default",
            "project_name": "service",
            "password": SERVICE_PASSWORD,
            "region_name": REGION,
        }
        conf = nova / "nova.conf"
        conf.write_text(
            _ini(
                {
                    "DEFAULT": {
                        "transport_url": f"rabbit://guest:guest@127.0.0.1:{self.ports['rabbit']}/",
                        "compute_driver": "fake.FakeDriver",
                        "my_ip": "127.0.0.1",
                        "host": "nodekiln-compute",
                        "state_path": nova / "state",
                        "instances_path": nova / "instances",
                        "vif_plugging_is_fatal": "false",
                        "vif_plugging_timeout": "0",
                        "log_dir": self.workdir / "logs",
                    },
                    "api": {"auth_strategy": "keystone"},
                    "api_database": {"connection": self._db_url("nova_api")},
                    "database": {"connection": self._db_url("nova")},
                    "keystone_authtoken": self._authtoken("nova"),
                    # Nova -> Neutron answers 401 without the service user token.
                    "service_user": {**client, "username": "nova", "send_service_user_token": "true"},
                    "placement": {**client, "username": "placement"},
                    "neutron": {**client, "username": "neutron"},
                    "glance": {"region_name": REGION},
                    "oslo_concurrency": {"lock_path": nova / "lock"},
                    "oslo_messaging_notifications": {"driver": "noop"},
                    "scheduler": {"discover_hosts_in_cells_interval": "2", "workers": "1"},
                    "conductor": {"workers": "1"},
                    "quota": {"instances": "500", "cores": "-1", "ram": "-1"},
                    "wsgi": {"api_paste_config": nova / "api-paste.ini"},
                    "oslo_policy": self.POLICY,
                }
            )
        )
        manage = [self._bin("nova-manage"), "--config-file", str(conf)]
        self._manage("nova-api_db_sync", [*manage, "api_db", "sync"])
        self._manage(
            "nova-map_cell0", [*manage, "cell_v2", "map_cell0", "--database_connection", self._db_url("nova_cell0")]
        )
        self._manage("nova-create_cell", [*manage, "cell_v2", "create_cell", "--name", "cell1"])
        self._manage("nova-db_sync", [*manage, "db", "sync"])
        env = {"OS_NOVA_CONFIG_DIR": str(nova)}
        api = self._serve("nova-api", "nova.wsgi.osapi_compute", self.ports["nova"], env, threads=8)
        for service in ("nova-conductor", "nova-scheduler", "nova-compute"):
            self._spawn(service, [self._bin(service), "--config-file", str(conf)])
        _wait("nova-api", lambda: _http_ok(f"http://127.0.0.1:{self.ports['nova']}/"), 120, api)
        admin = self.connect("nodekiln-admin")

        def compute_ready() -> bool:
            for proc in self.processes:
                if not proc.alive():
                    raise DevCloudError(f"{proc.name} exited; last lines of {proc.log}:\n" + "\n".join(proc.tail()))
            return any(h.status == "enabled" and h.state == "up" for h in admin.compute.hypervisors(details=True))

        _wait("nova-compute", compute_ready, 180, None, interval=1)

    def _create_project(self) -> None:
        """The user nodekiln runs as: a member of its own project; flavors and an external network from the operator."""
        admin = self.connect("nodekiln-admin")
        project = admin.identity.create_project(name="nodekiln", domain_id="default")
        user = admin.identity.create_user(
            name="nodekiln", password=USER_PASSWORD, domain_id="default", default_project_id=project.id
        )
        admin.identity.assign_project_role_to_user(project, user, admin.identity.find_role("member"))
        for name, vcpus, ram, disk in (
            ("m1.small", 1, 2048, 20),
            ("m1.medium", 2, 4096, 40),
            ("m1.large", 4, 8192, 80),
            ("m1.huge", 64, 4_000_000, 80),
        ):
            admin.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk, is_public=True)
        public = admin.network.create_network(
            name="public", is_router_external=True, provider_network_type="flat", provider_physical_network="public"
        )
        admin.network.create_subnet(
            network_id=public.id,
            name="public-subnet",
            ip_version=4,
            cidr="203.0.113.0/24",
            gateway_ip="203.0.113.1",
            is_dhcp_enabled=False,
        )
        admin.network.update_quota(project.id, port=1000, security_group_rule=500, floatingip=50)
