"""TLS, metrics and logs with real clients.

A wharf-server with `--tls-self-signed --log-format json` listens on [::1].
docker (20.10) treats only 127.0.0.0/8 as an insecure registry, so a name
that resolves to ::1 is a TLS registry to it: the test maps a unique name to
::1 in /etc/hosts (the line is removed afterwards) and docker must verify the
server's certificate with the CA from /etc/docker/certs.d/NAME:PORT/ca.crt,
which it reads per request (no dockerd restart). All traffic stays on the
loopback interface.

Checked: docker push/pull over TLS once the CA is where the server said, and
a certificate error without it; wharf-runner pulls over TLS with the CA in
its own certs.d (and fails without it); JSON logs parse, with one access
line per /v2/ request carrying the request id; /metrics and /readyz over TLS.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from runner_support import RunnerDaemon, busybox_image, runner_binary, unique_bridge
from support import RegistryApi, server_binary

HOSTS = Path("/etc/hosts")
CERTS_D = Path("/etc/docker/certs.d")


def free_port_v6() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


class TlsServer:
    def __init__(self, base: Path):
        self.name = f"wharf-tls-{os.getpid()}-{uuid.uuid4().hex[:6]}.test"
        self.port = free_port_v6()
        self.host = f"{self.name}:{self.port}"
        self.data = base / "data"
        self.log_path = base / "server.log"
        self.hosts_line = f"::1 {self.name}\n"
        self.proc: subprocess.Popen | None = None

    @property
    def ca(self) -> Path:
        return self.data / "tls" / "ca.crt"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def start(self) -> None:
        with HOSTS.open("a") as f:
            f.write(self.hosts_line)
        env = {**os.environ, "NO_COLOR": "1", "WHARF_LOG": "info"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(server_binary()), "--data-dir", str(self.data), "serve",
                    "--listen", f"[::1]:{self.port}", "--tls-self-signed", "--tls-san", self.name,
                    "--log-format", "json",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            )
        deadline = time.monotonic() + 30
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"wharf-server exited with {self.proc.returncode}\n{self.log()}")
            if self.ca.is_file():
                try:
                    r = requests.get(f"{self.url}/healthz", verify=str(self.ca), timeout=2)
                    if r.status_code == 200:
                        return
                    last = f"{r.status_code} {r.text}"
                except requests.RequestException as exc:
                    last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"TLS server not ready: {last}\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        text = HOSTS.read_text()
        if self.hosts_line in text:
            HOSTS.write_text(text.replace(self.hosts_line, ""))

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"

    def log_records(self) -> list[dict]:
        """Every log line, each parsed as JSON (a line that is not fails the test)."""
        records = []
        for line in self.log().splitlines():
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"log line is not JSON: {line!r}")
        return records

    def docker_ca_path(self) -> Path:
        """Where the server said to put the CA for docker (from its log)."""
        for rec in self.log_records():
            m = re.search(r"cp (\S+) (/etc/docker/certs\.d/(\S+)/ca\.crt)", rec.get("message", ""))
            if m and m.group(3) == self.host:
                assert Path(m.group(1)) == self.ca
                return Path(m.group(2))
        raise AssertionError(f"the server did not say where docker's CA goes for {self.host}\n{self.log()}")


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    if not server_binary().is_file():
        pytest.fail(f"wharf-server binary not found at {server_binary()}")
    server = TlsServer(tmp_path_factory.mktemp("tls"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(CERTS_D / server.host, ignore_errors=True)
    panics = [line for line in server.log().splitlines() if "panicked at" in line]
    assert not panics, "\n".join(panics)


@pytest.fixture
def no_docker_ca(tls_server):
    """Makes sure docker's certs.d has no CA for the server before and after."""
    shutil.rmtree(CERTS_D / tls_server.host, ignore_errors=True)
    yield
    shutil.rmtree(CERTS_D / tls_server.host, ignore_errors=True)


def tiny_image_tar(path: Path, content: str) -> Path:
    root = path / "rootfs"
    root.mkdir(parents=True)
    (root / "hello.txt").write_text(content)
    tar = path / "rootfs.tar"
    with tarfile.open(tar, "w") as t:
        t.add(root / "hello.txt", arcname="hello.txt")
    return tar


def test_self_signed_files_and_instructions(tls_server):
    tls_dir = tls_server.data / "tls"
    for key in ("ca.key", "server.key"):
        assert (tls_dir / key).stat().st_mode & 0o777 == 0o600, key
    assert tls_server.docker_ca_path() == CERTS_D / tls_server.host / "ca.crt"
    # The certificate names the host, localhost, the loopback addresses and
    # the host name (CPython's own certificate decoder).
    import ssl

    decoded = ssl._ssl._test_decode_cert(str(tls_dir / "server.crt"))
    sans = set(decoded["subjectAltName"])
    for want in (("DNS", tls_server.name), ("DNS", "localhost"), ("IP Address", "127.0.0.1")):
        assert want in sans, (want, sans)
    assert ("DNS", socket.gethostname()) in sans, sans
    # A restart reuses the CA and the certificate.
    ca_before = tls_server.ca.read_bytes()
    cert_before = (tls_dir / "server.crt").read_bytes()
    tls_server.restart()
    assert tls_server.ca.read_bytes() == ca_before
    assert (tls_dir / "server.crt").read_bytes() == cert_before


def test_docker_push_and_pull_over_tls(tls_server, no_docker_ca, docker, tmp_path):
    ref = f"{tls_server.host}/e2e/tls-hello:v1"
    tar = tiny_image_tar(tmp_path, f"hello over TLS {uuid.uuid4()}\n")
    docker("import", str(tar), ref)
    try:
        # Without the CA docker refuses the certificate.
        failed = docker("push", ref, check=False)
        assert failed.returncode != 0, failed.stdout
        assert re.search(r"x509|certificate", failed.stderr + failed.stdout), failed.stderr
        # With the CA where the server said, push and pull work over TLS.
        ca_path = tls_server.docker_ca_path()
        ca_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tls_server.ca, ca_path)
        docker("push", ref)
        image_id = docker.image_id(ref)
        docker("rmi", ref)
        docker("pull", ref)
        assert docker.image_id(ref) == image_id
        r = requests.get(f"{tls_server.url}/v2/e2e/tls-hello/tags/list", verify=str(tls_server.ca), timeout=10)
        assert r.json()["tags"] == ["v1"]
    finally:
        docker("rmi", ref, check=False)


def test_runner_pulls_over_tls(tls_server, no_docker_ca, tmp_path):
    if not runner_binary().is_file():
        pytest.fail(f"wharf-runner binary not found at {runner_binary()}")
    api = RegistryApi(tls_server.url)
    api.session.verify = str(tls_server.ca)
    api.session.trust_env = False  # REQUESTS_CA_BUNDLE would win over verify
    busybox_image().push(api, "e2e/tls-busybox", "latest", docker=True)
    sock_dir = Path(tempfile_dir())
    bridge, subnet = unique_bridge()
    daemon = RunnerDaemon(
        runner_binary(), tmp_path / "root", sock_dir / "runner.sock", tmp_path / "daemon.log",
        tls_server.host, bridge=bridge, bridge_subnet=subnet,
    )
    ref = f"{tls_server.host}/e2e/tls-busybox:latest"
    daemon.start()
    try:
        failed = daemon.cli("pull", ref, check=False, timeout=120)
        assert failed.returncode != 0, failed.stdout
        assert re.search(r"certificate|UnknownIssuer", failed.stderr + failed.stdout), failed.stderr
        # The runner's own certs.d, laid out as docker's.
        runner_ca = tmp_path / "root" / "certs.d" / tls_server.host / "ca.crt"
        runner_ca.parent.mkdir(parents=True)
        shutil.copy(tls_server.ca, runner_ca)
        daemon.cli("pull", ref, timeout=120)
        listed = daemon.cli("images").stdout
        assert f"{tls_server.host}/e2e/tls-busybox" in listed, listed
        out = daemon.cli("run", "--rm", "--network", "none", ref, "echo", "pulled over TLS", timeout=120).stdout
        assert "pulled over TLS" in out
    finally:
        daemon.stop()
        daemon.remove_bridge()
        shutil.rmtree(sock_dir, ignore_errors=True)


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="wr-", dir="/tmp")


def test_json_access_log_metrics_and_readiness(tls_server):
    verify = str(tls_server.ca)
    session = requests.Session()
    session.verify = verify
    session.trust_env = False  # REQUESTS_CA_BUNDLE would win over verify
    ids = [f"e2e-{uuid.uuid4().hex[:12]}" for _ in range(3)]
    r = session.get(f"{tls_server.url}/v2/", headers={"X-Request-Id": ids[0]}, timeout=10)
    assert r.status_code == 200 and r.headers["X-Request-Id"] == ids[0]
    r = session.get(
        f"{tls_server.url}/v2/e2e/none/manifests/latest",
        headers={"X-Request-Id": ids[1], "Authorization": "Bearer not-a-secret-token-xyz"},
        timeout=10,
    )
    assert r.status_code == 404 and r.headers["X-Request-Id"] == ids[1]
    r = session.get(f"{tls_server.url}/v2/_catalog", headers={"X-Request-Id": ids[2]}, timeout=10)
    assert r.status_code == 200
    made = session.get(f"{tls_server.url}/v2/", timeout=10).headers["X-Request-Id"]
    assert re.fullmatch(r"[0-9a-f]{20}", made), made

    assert session.get(f"{tls_server.url}/healthz", timeout=10).status_code == 200
    ready = session.get(f"{tls_server.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text

    metrics = session.get(f"{tls_server.url}/metrics", timeout=10)
    assert metrics.headers["Content-Type"].startswith("application/openmetrics-text")
    text = metrics.text
    assert text.endswith("# EOF\n")
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? \S+$')
    for line in text.splitlines():
        assert line.startswith("# ") or sample.match(line), f"bad metrics line {line!r}"
    assert re.search(r'^wharf_http_requests_total\{route="manifest",status="404"\} [1-9]', text, re.M), text
    assert re.search(r'^wharf_http_requests_total\{route="catalog",status="200"\} [1-9]', text, re.M), text

    time.sleep(0.2)
    records = tls_server.log_records()  # every line is JSON
    access = [rec for rec in records if rec.get("target") == "wharf::access"]
    for rid, route, status, path in (
        (ids[0], "base", 200, "/v2/"),
        (ids[1], "manifest", 404, "/v2/e2e/none/manifests/latest"),
        (ids[2], "catalog", 200, "/v2/_catalog"),
    ):
        mine = [rec for rec in access if rec.get("request_id") == rid]
        assert len(mine) == 1, (rid, mine)
        rec = mine[0]
        assert (rec["route"], rec["status"], rec["path"], rec["method"]) == (route, status, path, "GET"), rec
        for field in ("bytes_in", "bytes_out", "ms", "remote", "user", "timestamp", "level"):
            assert field in rec, (field, rec)
        assert rec["remote"].startswith("[::1]:"), rec
    # /healthz, /readyz and /metrics are not /v2/ requests: no access line.
    assert not [rec for rec in access if rec.get("path") in ("/healthz", "/readyz", "/metrics")]
    assert "not-a-secret-token-xyz" not in tls_server.log()
