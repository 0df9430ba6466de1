"""Small programs the netns test bed runs inside its namespaces (standard library only: they
start in ~50 ms, which matters when measuring a fail-over).

    python -m testing.netns_tools standin NAME CERT KEY [PORT]   kube-apiserver stand-in
    python -m testing.netns_tools solver NAME PORT               plain-HTTP stand-in (an HTTP-01 solver)
    python -m testing.netns_tools listen PORT...                 accept and close on TCP ports
    python -m testing.netns_tools get URL COUNT                  COUNT GETs, one body a line
    python -m testing.netns_tools probe URL                      after 'go' on stdin: first success
    python -m testing.netns_tools connect HOST TIMEOUT PORT...   'PORT open|closed|filtered'
    python -m testing.netns_tools load NAME ADDR PORT CAFILE|- [THREADS]
                                                                 HTTPS GETs for NAME until 'stop' on stdin
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import ssl
import sys
import threading
import time
import urllib.request


def standin(name: str, cert: str | None, key: str | None, port: int = 6443) -> None:
    """Answers every GET (/healthz included) with 200 and `ok NAME`, over HTTPS, like a healthy
    kube-apiserver answers /healthz; the body says which node served the request. Without a
    certificate: over plain HTTP (what cert-manager's HTTP-01 solver behind the ingress answers)."""
    body = f"ok {name}\n".encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)
    if cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()


def listen(ports: list[int]) -> None:
    socks = []
    for port in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(16)
        socks.append(s)

    def serve(s: socket.socket) -> None:
        while True:
            conn, _ = s.accept()
            conn.close()

    for s in socks:
        threading.Thread(target=serve, args=(s,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def _context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _get(url: str, timeout: float, context: ssl.SSLContext | None = None) -> str:
    with urllib.request.urlopen(url, timeout=timeout, context=context or _context()) as response:
        return response.read().decode().strip()


def get(url: str, count: int) -> None:
    for _ in range(count):
        try:
            print(_get(url, 2.0), flush=True)
        except OSError as exc:
            print(f"error {exc}", flush=True)


def probe(url: str, every: float = 0.02, timeout: float = 1.0) -> None:
    """Wait for 'go', then start a GET every `every` s; print the CLOCK_MONOTONIC time at which
    the first one succeeded, and its body. Overlapping attempts: a request stuck on a dead
    address does not delay the next one."""
    context = _context()
    print("ready", flush=True)
    sys.stdin.readline()
    done = threading.Event()
    lock = threading.Lock()

    def attempt() -> None:
        try:
            text = _get(url, timeout, context)
        except OSError:
            return
        stamp = time.monotonic()
        with lock:
            if not done.is_set():
                done.set()
                print(f"{stamp:.6f} {text}", flush=True)

    while not done.wait(every):
        threading.Thread(target=attempt, daemon=True).start()


def connect(host: str, timeout: float, ports: list[int]) -> None:
    results: dict[int, str] = {}

    def one(port: int) -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                results[port] = "open"
        except ConnectionRefusedError:
            results[port] = "closed"
        except OSError:
            results[port] = "filtered"

    threads = [threading.Thread(target=one, args=(p,)) for p in ports]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for port in ports:
        print(port, results[port])


def _https_get(name: str, addr: str, port: int, context: ssl.SSLContext, timeout: float) -> tuple[int, str, str]:
    """One GET of https://NAME/ sent to ADDR:PORT (SNI and Host: NAME) on a new connection:
    (status, body, SHA-256 of the certificate served)."""
    with (
        socket.create_connection((addr, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        der = tls.getpeercert(binary_form=True) or b""
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body.decode(errors="replace").strip(), hashlib.sha256(der).hexdigest()


def load(name: str, addr: str, port: int, cafile: str, threads: int = 4, timeout: float = 5.0) -> None:
    """A steady load on the edge: THREADS loops, each one GET after another on new connections,
    until a line other than `stat` (or EOF) on stdin; then (and after each `stat`) one JSON line: requests, failures (CLOCK_MONOTONIC time
    and reason; a status other than 200 is one), answers per server (the stand-ins' bodies), and
    per server and per certificate the first and last time seen. With CAFILE the chain and the
    name are verified (a failure otherwise)."""
    context = _context() if cafile == "-" else ssl.create_default_context(cafile=cafile)
    lock = threading.Lock()
    stop = threading.Event()
    summary: dict[str, object] = {"requests": 0}
    failures: list[tuple[float, str]] = []
    servers: dict[str, list[float]] = {}  # body -> [count, first, last]
    certs: dict[str, list[float]] = {}  # sha256 -> [count, first, last]

    def seen(table: dict[str, list[float]], key: str, stamp: float) -> None:
        entry = table.setdefault(key, [0, stamp, stamp])
        entry[0] += 1
        entry[2] = stamp

    def loop() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status, body, cert = _https_get(name, addr, port, context, timeout)
                error = "" if status == 200 else f"status {status}: {body[:80]}"
            except (OSError, ValueError, IndexError) as exc:
                error, body, cert = f"{type(exc).__name__}: {exc}", "", ""
            with lock:
                summary["requests"] = int(str(summary["requests"])) + 1
                if error:
                    failures.append((started, error))
                else:
                    stamp = time.monotonic()
                    seen(servers, body, stamp)
                    seen(certs, cert, stamp)
            if error:
                time.sleep(0.01)  # a refused connection returns at once: do not spin

    workers = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()

    def report() -> None:
        with lock:
            summary.update(failures=failures, servers=servers, certs=certs)
            print(json.dumps(summary), flush=True)

    print("ready", flush=True)
    while sys.stdin.readline().strip() == "stat":  # the summary so far; anything else stops
        report()
    stop.set()
    for w in workers:
        w.join(timeout + 1)
    report()


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "standin":
        standin(args[0], args[1], args[2], int(args[3]) if len(args) > 3 else 6443)
    elif command == "solver":
        standin(args[0], None, None, int(args[1]))
    elif command == "listen":
        listen([int(p) for p in args])
    elif command == "get":
        get(args[0], int(args[1]))
    elif command == "probe":
        probe(args[0])
    elif command == "connect":
        connect(args[0], float(args[1]), [int(p) for p in args[2:]])
    elif command == "load":
        load(args[0], args[1], int(args[2]), args[3], int(args[4]) if len(args) > 4 else 4)
    else:
        raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    main(sys.argv[1:])
