"""Scale-out fixtures: an S3-compatible server (moto), wharf replicas on it, and
an nginx that sends each request to the next replica.

- `moto`: one moto_server (PyPI moto[server]) per test session on a free
  loopback port; `moto.new_bucket()` makes a fresh bucket, `moto.client()` is a
  boto3 client to look into it.
- `catalog_url`: the catalog the replicas share, parametrized: SQLite (one
  file that every replica process opens) and PostgreSQL (a fresh database on
  the session's `postgres` cluster, see pg.py).
- `replicas`: make(n=2, **opts) -> a Cluster of n wharf-server processes with
  their own data dirs, one catalog, one bucket, one token key, auth on, behind
  a round-robin nginx (`cluster.proxy`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import requests

from support import WharfServer, free_port, new_password

MOTO_KEY = "wharf-e2e-access"
# The secret the servers get; the wharf_factory fixture fails the test if it
# (or any password) shows up in a server log.
MOTO_SECRET = "wharf-e2e-s3-secret-" + new_password("s3")
READY_TIMEOUT = 30.0


class Moto:
    """A moto_server process: an S3 API on 127.0.0.1:port, all in memory."""

    def __init__(self, log_path: Path):
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.buckets = 0

    def start(self) -> None:
        binary = shutil.which("moto_server")
        if binary is None:
            pytest.fail("moto_server not found: pip install 'moto[server]' (scripts/test does)")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "-H", "127.0.0.1", "-p", str(self.port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"moto_server exited with {self.proc.returncode}; log: {self.log_path}")
            try:
                if requests.get(f"{self.endpoint}/moto-api/", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"moto_server not ready after {READY_TIMEOUT}s; log: {self.log_path}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self):
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=MOTO_KEY,
            aws_secret_access_key=MOTO_SECRET,
        )

    def new_bucket(self) -> str:
        self.buckets += 1
        name = f"wharf-e2e-{os.getpid()}-{self.buckets}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object under `prefix`: key -> size."""
        out = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    def open_multipart_uploads(self, bucket: str) -> list[str]:
        resp = self.client().list_multipart_uploads(Bucket=bucket)
        return [u["Key"] for u in resp.get("Uploads", [])]


def s3_config(
    moto: Moto, bucket: str, catalog_url: str, key_path: Path, credentials: bool = True, **storage
) -> str:
    """The TOML of a replica: the shared catalog, bucket and token key, auth on.
    Without `credentials`, the key and secret must come from AWS_* variables."""
    lines = [
        "[catalog]",
        f'url = "{catalog_url}"',
        "[storage]",
        'backend = "s3"',
        f'bucket = "{bucket}"',
        f'endpoint = "{moto.endpoint}"',
        'region = "us-east-1"',
        "allow_http = true",
        "virtual_hosted_style = false",
        # The smallest part S3 allows: more parts per blob, so multipart is
        # exercised by every layer above 5 MiB.
        "part_size_mib = 5",
    ]
    if credentials:
        lines += [f'access_key_id = "{MOTO_KEY}"', f'secret_access_key = "{MOTO_SECRET}"']
    for k, v in storage.items():
        lines.append(f"{k} = {str(v).lower() if isinstance(v, bool) else v}")
    lines += ["[auth]", "enabled = true", f'key_path = "{key_path}"']
    return "\n".join(lines) + "\n"


NGINX_CONF = """
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format upstream '$request_method $uri $status upstream=$upstream_addr';
    access_log {dir}/access.log upstream;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # Round robin per request (nginx's default), with no retry on another
    # replica: each request goes to exactly one, in turn.
    upstream wharf {{
{servers}
        keepalive 8;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        proxy_next_upstream off;
        proxy_read_timeout 600s;
        proxy_send_timeout 600s;
        location / {{
            proxy_pass http://wharf;
            proxy_set_header Host $http_host;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class RoundRobinProxy:
    """nginx on a free loopback port in front of `upstreams` (host:port)."""

    def __init__(self, workdir: Path, upstreams: list[str]):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.upstreams = upstreams
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def docker_host(self) -> str:
        return f"localhost:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            pytest.fail("nginx not found: apt-get install nginx (scripts/test does)")
        servers = "\n".join(f"        server {u} max_fails=0;" for u in self.upstreams)
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, servers=servers, port=self.port))
        with open(self.dir / "stderr.log", "ab") as log:
            self.proc = subprocess.Popen(
                [nginx, "-c", str(conf), "-p", str(self.dir)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.log_tail()}")
            try:
                requests.get(f"{self.url}/v2/", timeout=2)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError(f"nginx not ready: {self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def requests_by_upstream(self, method: str | None = None, prefix: str = "/v2/") -> dict[str, int]:
        """How many requests (of `method`, under `prefix`) each upstream served."""
        counts: dict[str, int] = {}
        try:
            text = (self.dir / "access.log").read_text()
        except FileNotFoundError:
            return counts
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 4 or not parts[1].startswith(prefix):
                continue
            if method is not None and parts[0] != method:
                continue
            upstream = parts[3].removeprefix("upstream=")
            counts[upstream] = counts.get(upstream, 0) + 1
        return counts

    def log_tail(self) -> str:
        out = []
        for name in ("stderr.log", "error.log"):
            p = self.dir / name
            if p.exists():
                out.append(f"--- {p} ---\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(out)


TLS_NGINX_CONF = """
user root;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        client_max_body_size 0;
        proxy_request_buffering off;
        proxy_buffering off;
        proxy_http_version 1.1;
        location / {{
            proxy_pass http://{upstream};
            proxy_set_header Host $http_host;
        }}
    }}
}}
"""


def make_tls_certs(workdir: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it
    (python `cryptography`, which moto depends on). Returns (ca.pem, cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wharf e2e test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    workdir.mkdir(parents=True, exist_ok=True)
    ca_path, cert_path, key_path = workdir / "ca.pem", workdir / "cert.pem", workdir / "key.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return ca_path, cert_path, key_path


class TlsProxy(RoundRobinProxy):
    """nginx terminating TLS (a certificate of a private CA) in front of one
    plain-http upstream, e.g. moto: an https S3 endpoint."""

    def __init__(self, workdir: Path, upstream: str, cert: Path, key: Path):
        super().__init__(workdir, [upstream])
        self.cert = cert
        self.key = key

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists():
            pytest.fail("nginx not found: apt-get install nginx (scripts/test does)")
        conf = self.dir / "nginx.conf"
        conf.write_text(
            TLS_NGINX_CONF.format(dir=self.dir, port=self.port, cert=self.cert, key=self.key, upstream=self.upstreams[0])
        )
        with open(self.dir / "stderr.log", "ab") as log:
            self.proc = subprocess.Popen(
                [nginx, "-c", str(conf), "-p", str(self.dir)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited: {self.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
                return
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"nginx not ready: {self.log_tail()}")


class Cluster:
    """Replicas on one catalog and bucket, behind `proxy`. `users` holds the
    passwords the admin CLI set (the same catalog for every replica)."""

    def __init__(self, servers: list[WharfServer], proxy: RoundRobinProxy, moto: Moto, bucket: str):
        self.servers = servers
        self.proxy = proxy
        self.moto = moto
        self.bucket = bucket

    @property
    def users(self) -> dict[str, str]:
        return self.servers[0].users


@pytest.fixture(scope="session")
def moto(tmp_path_factory):
    server = Moto(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def catalog_url(request, tmp_path):
    """The catalog every replica of a test shares. SQLite: one file, opened by
    each replica process (WAL mode; fine on one machine). PostgreSQL: a fresh
    database on the session's cluster (conftest.py's `postgres`, pg.py), the
    shape of a real scale-out deployment."""
    if request.param == "postgres":
        return request.getfixturevalue("postgres").create_database()
    return f"sqlite://{tmp_path / 'shared-catalog.db'}"


@pytest.fixture
def replicas(request, wharf_factory, moto, catalog_url, tmp_path):
    """make(n=2, **storage_settings) -> a running Cluster: n wharf-servers with
    auth on (user `alice`, admin), blobs in a fresh bucket, behind nginx."""
    proxies: list[RoundRobinProxy] = []

    def make(n: int = 2, aws_env: bool = False, **storage) -> Cluster:
        """`aws_env`: S3 credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
        instead of the config file."""
        bucket = moto.new_bucket()
        key_path = tmp_path / "token-key.pem"
        config = s3_config(moto, bucket, catalog_url, key_path, credentials=not aws_env, **storage)
        env = {"WHARF_LOG": "debug,sqlx=info"}
        if aws_env:
            env |= {"AWS_ACCESS_KEY_ID": MOTO_KEY, "AWS_SECRET_ACCESS_KEY": MOTO_SECRET}
        servers = [wharf_factory(f"replica{i}-{len(proxies)}", env=env, config=config) for i in range(n)]
        for s in servers:
            s.secrets.append(MOTO_SECRET)
        # Users go into the shared catalog once, through the first replica's CLI.
        password = servers[0].add_user("alice", admin=True)
        for s in servers[1:]:
            s.users["alice"] = password
            s.secrets.append(password)
        for s in servers:
            s.start()
        proxy = RoundRobinProxy(tmp_path / f"nginx{len(proxies)}", [s.host for s in servers])
        proxies.append(proxy)
        proxy.start()
        return Cluster(servers, proxy, moto, bucket)

    try:
        yield make
    finally:
        for p in proxies:
            p.stop()
            if any(getattr(getattr(request.node, f"rep_{w}", None), "failed", False) for w in ("setup", "call")):
                print(p.log_tail())
