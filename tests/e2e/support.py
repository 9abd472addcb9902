"""Helpers shared by the end-to-end tests: the server process and raw HTTP.

Nothing here knows about pytest; conftest.py turns these into fixtures.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urljoin

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 30.0
HTTP_TIMEOUT = 60.0
# Auth on, and a log line per request (so the log checks see as much as possible).
AUTH_ENV = {"WHARF_AUTH_ENABLED": "true", "WHARF_LOG": "debug,sqlx=info"}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def digest_of(data: bytes, algorithm: str) -> str:
    return f"{algorithm}:" + hashlib.new(algorithm, data).hexdigest()


def digest_matches(data: bytes, digest: str) -> bool:
    algorithm, _, _ = digest.partition(":")
    return digest_of(data, algorithm) == digest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_binary() -> Path:
    """WHARF_SERVER_BIN, else $CARGO_TARGET_DIR (or ./target)/debug/wharf-server."""
    explicit = os.environ.get("WHARF_SERVER_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
    return target / "debug" / "wharf-server"


def run(cmd, *, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capture text output, and fail loudly with both streams."""
    if "input" not in kwargs:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed with exit code {proc.returncode}: {' '.join(map(str, cmd))}\n"
            f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
        )
    return proc


def describe(resp: requests.Response) -> str:
    """Everything the server said, for assertion messages."""
    body = resp.content[:2000]
    try:
        body = body.decode()
    except UnicodeDecodeError:
        body = repr(body)
    headers = "\n".join(f"  {k}: {v}" for k, v in resp.headers.items())
    return f"{resp.request.method} {resp.request.url} -> {resp.status_code}\n{headers}\n  body: {body}"


def error_codes(resp: requests.Response) -> list[str]:
    """The `code`s of a distribution-spec error body, [] if there is none."""
    try:
        return [e.get("code") for e in resp.json().get("errors", [])]
    except (ValueError, AttributeError):
        return []


def new_password(label: str) -> str:
    """A unique, greppable password (the tests check the server never logs one)."""
    return f"{label}-pw-{secrets.token_urlsafe(12)}"


class WharfServer:
    """One wharf-server process bound to a fixed port and data dir, restartable.

    `env` is added to the server's environment (e.g. WHARF_AUTH_ENABLED=true),
    `config` is passed as --config. With auth on, the admin CLI (`cli`,
    `add_user`, `grant`, ...) manages users on the same data dir and remembers
    every password and secret it handed out in `users` and `secrets`."""

    def __init__(
        self,
        binary: Path,
        data_dir: Path,
        log_path: Path,
        port: int | None = None,
        env: dict | None = None,
        config: Path | None = None,
    ):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port or free_port()
        self.env = dict(env or {})
        self.config = config
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.users: dict[str, str] = {}  # name -> password (or robot secret)
        self.secrets: list[str] = []  # every password/secret used against this server
        # Subclasses start the server elsewhere (a network namespace, TLS):
        # a command prefix, extra `serve` flags, and how the readiness probe GETs.
        self.prefix: list[str] = []
        self.serve_args: list[str] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def docker_host(self) -> str:
        # docker treats localhost and 127.0.0.0/8 as insecure-allowed registries.
        return f"localhost:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def api(self, user: str | None = None, anonymous: bool = False) -> "RegistryApi":
        """A raw HTTP client; with `user` (a name from `users`) or `anonymous`,
        it answers 401 challenges with a token from /token."""
        if user is not None:
            return RegistryApi(self.url, credentials=(user, self.users[user]))
        return RegistryApi(self.url, credentials=() if anonymous else None)

    def command(self, *args) -> list[str]:
        cmd = [str(self.binary)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd + ["--data-dir", str(self.data_dir), *map(str, args)]

    def cli(self, *args, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """The admin CLI (`wharf-server --data-dir D ...`) on this server's data dir."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "NO_COLOR": "1"}
        env.pop("WHARF_ADMIN_PASSWORD", None)
        kwargs = {"input": input} if input is not None else {}
        return run(self.command(*args), check=check, timeout=60, env=env, **kwargs)

    def add_user(self, name: str, password: str | None = None, admin: bool = False) -> str:
        password = password or new_password(name)
        self.secrets.append(password)
        flags = ["--admin"] if admin else []
        out = self.cli("user", "add", name, *flags, "--password-stdin", input=password + "\n").stdout
        assert f"created user {name}" in out, out
        self.users[name] = password
        return password

    def grant(self, user: str, pattern: str, actions: str) -> None:
        self.cli("grant", user, pattern, actions)

    def public(self, pattern: str, on: bool = True) -> None:
        self.cli("public", pattern, "on" if on else "off")

    def add_robot(self, name: str, *pull_patterns: str) -> subprocess.CompletedProcess:
        args = [arg for p in pull_patterns for arg in ("--pull", p)]
        proc = self.cli("robot", "add", name, *args)
        secret = proc.stdout.strip()
        self.secrets.append(secret)
        self.users[name] = secret
        return proc

    def secrets_in_log(self) -> list[str]:
        """Every password/secret (or its Basic-auth encoding) that shows up in the log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        found = [s for s in self.secrets if s in text]
        for user, password in self.users.items():
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            if basic in text:
                found.append(f"Basic {basic} ({user})")
        return found

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        env = {**os.environ, **self.env}
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env["NO_COLOR"] = "1"  # plain log text for humans and for panics()
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== wharf-server start #{self.starts} on {self.host} =====\n".encode())
            log.flush()
            cmd = [str(self.binary)]
            if self.config is not None:
                cmd += ["--config", str(self.config)]
            self.proc = subprocess.Popen(
                [*self.prefix, *cmd, "serve", "--listen", self.host, "--data-dir", str(self.data_dir), *self.serve_args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise AssertionError(f"wharf-server exited with {code} before ready\n{self.log_tail()}")
            try:
                resp = self.probe(f"{self.url}/v2/")
                if resp.status_code == 200:
                    return
                # With auth on, /v2/ answers with a token challenge once it serves.
                if resp.status_code == 401 and resp.headers.get("WWW-Authenticate", "").startswith("Bearer "):
                    return
                last = describe(resp)
            except requests.RequestException as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"wharf-server not ready after {READY_TIMEOUT}s: {last}\n{self.log_tail()}")

    def probe(self, url: str) -> requests.Response:
        return requests.get(url, timeout=2)

    def stop(self) -> None:
        """Graceful stop: SIGTERM, then SIGKILL after 15 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, "server is not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def panics(self) -> list[str]:
        """Log lines where the server panicked (a handler panic is a bug even if it recovered)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if "panicked at" in line]

    def log_tail(self, lines: int = 200) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no server log)"
        return f"--- wharf-server log {self.log_path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])


BEARER_PARAM_RE = re.compile(r'(\w+)="([^"]*)"')


def bearer_challenge(resp: requests.Response) -> dict | None:
    """The parameters of a `WWW-Authenticate: Bearer ...` challenge, None without one."""
    value = resp.headers.get("WWW-Authenticate", "")
    if not value.lower().startswith("bearer "):
        return None
    return dict(BEARER_PARAM_RE.findall(value))


class RegistryApi:
    """Thin distribution-spec client on `requests`, for the tests that speak HTTP.

    `credentials`: None ignores auth (a 401 is returned as is); `(user, password)`
    or `()` (anonymous) answers a Bearer challenge like docker does: a token from
    the challenge's realm for its scope, then the request once more."""

    def __init__(self, base_url: str, credentials: tuple | None = None):
        self.base = base_url
        self.session = requests.Session()
        self.credentials = credentials
        self.bearer: str | None = None

    def authorize(self, *scopes: str) -> "RegistryApi":
        """Sends a token for `scopes` with every request from now on. A request
        that carries a big body must not be the one that gets challenged: the
        server answers 401 before reading the body and closes, and `requests`
        sees a broken connection instead of the answer."""
        self.bearer = None
        self.bearer = self.token(list(scopes))
        return self

    def url(self, path_or_location: str) -> str:
        return urljoin(self.base + "/", path_or_location)

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        kwargs.setdefault("timeout", HTTP_TIMEOUT)
        if self.bearer:
            kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": f"Bearer {self.bearer}"}
        resp = self.session.request(method, self.url(path), **kwargs)
        challenge = bearer_challenge(resp) if resp.status_code == 401 else None
        if self.credentials is None or challenge is None:
            return resp
        token = self.token(challenge.get("scope"), realm=challenge["realm"], service=challenge.get("service"))
        headers = {**kwargs.pop("headers", {}), "Authorization": f"Bearer {token}"}
        return self.session.request(method, self.url(path), headers=headers, **kwargs)

    def token(self, scope: str | list[str] | None, realm: str | None = None, service: str | None = None) -> str:
        """GET /token (Basic auth with the credentials, or anonymous) for a scope."""
        params = {"service": service or "wharf-registry"}
        if scope:
            params["scope"] = scope
        auth = tuple(self.credentials) if self.credentials else None
        resp = self.session.get(realm or self.url("/token"), params=params, auth=auth, timeout=HTTP_TIMEOUT)
        assert resp.status_code == 200, describe(resp)
        return resp.json()["token"]

    # --- reads ---
    def get_blob(self, repo: str, digest: str) -> requests.Response:
        return self.request("GET", f"/v2/{repo}/blobs/{digest}")

    def get_manifest(self, repo: str, ref: str, method: str = "GET") -> requests.Response:
        accept = ", ".join(
            [
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.docker.distribution.manifest.v2+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
            ]
        )
        return self.request(method, f"/v2/{repo}/manifests/{ref}", headers={"Accept": accept})

    def manifest_digest(self, repo: str, ref: str) -> str:
        resp = self.get_manifest(repo, ref, method="HEAD")
        assert resp.status_code == 200, describe(resp)
        digest = resp.headers.get("Docker-Content-Digest")
        assert digest, f"no Docker-Content-Digest header\n{describe(resp)}"
        return digest

    def manifest_json(self, repo: str, ref: str) -> tuple[dict, bytes, requests.Response]:
        resp = self.get_manifest(repo, ref)
        assert resp.status_code == 200, describe(resp)
        return resp.json(), resp.content, resp

    def tags(self, repo: str) -> list[str]:
        resp = self.request("GET", f"/v2/{repo}/tags/list")
        assert resp.status_code == 200, describe(resp)
        return resp.json().get("tags") or []

    def assert_blob(self, repo: str, digest: str) -> bytes:
        """GET a blob that must exist and hash to its digest."""
        resp = self.get_blob(repo, digest)
        assert resp.status_code == 200, describe(resp)
        assert digest_matches(resp.content, digest), f"blob bytes do not hash to {digest}"
        return resp.content

    # --- uploads ---
    def start_upload(self, repo: str) -> str:
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/")
        assert resp.status_code == 202, describe(resp)
        return self.url(resp.headers["Location"])

    def patch_chunk(self, location: str, chunk: bytes, offset: int) -> tuple[str, int]:
        """PATCH one chunk with Content-Range; returns (next location, bytes stored)."""
        resp = self.request(
            "PATCH",
            location,
            data=chunk,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
            },
        )
        assert resp.status_code == 202, describe(resp)
        stored = parse_range_end(resp) + 1
        assert stored == offset + len(chunk), f"server reports {stored} bytes stored\n{describe(resp)}"
        return self.url(resp.headers["Location"]), stored

    def finish_upload(self, location: str, digest: str, body: bytes = b"") -> requests.Response:
        sep = "&" if "?" in location else "?"
        headers = {"Content-Type": "application/octet-stream"}
        return self.request("PUT", f"{location}{sep}digest={digest}", data=body, headers=headers)

    def upload_status(self, location: str) -> requests.Response:
        return self.request("GET", location)

    def push_chunks(self, location: str, data: bytes, offset: int, chunk_size: int, on_chunk=None):
        """PATCH data[offset:] in chunks; returns the last location."""
        while offset < len(data):
            location, offset = self.patch_chunk(location, data[offset : offset + chunk_size], offset)
            if on_chunk:
                on_chunk(location, offset)
        return location

    def chunked_upload(self, repo: str, data: bytes, chunk_size: int, digest: str | None = None) -> str:
        digest = digest or sha256_digest(data)
        location = self.push_chunks(self.start_upload(repo), data, 0, chunk_size)
        resp = self.finish_upload(location, digest)
        assert resp.status_code == 201, describe(resp)
        return digest

    def monolithic_upload(self, repo: str, data: bytes, digest: str | None = None) -> requests.Response:
        """Single POST ?digest= with the whole blob. A registry may instead answer
        202 with a Location (spec: then the client PUTs the blob there)."""
        digest = digest or sha256_digest(data)
        resp = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/?digest={digest}",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
        )
        if resp.status_code == 202:
            return self.finish_upload(self.url(resp.headers["Location"]), digest, body=data)
        return resp


def assert_image_in_registry(api: "RegistryApi", repo: str, ref: str, digest: str) -> dict:
    """The registry serves `repo:ref` as exactly `digest`, and every blob it names."""
    assert api.manifest_digest(repo, ref) == digest
    manifest, raw, resp = api.manifest_json(repo, ref)
    assert digest_matches(raw, digest), "manifest bytes do not hash to the pushed digest"
    assert resp.headers.get("Docker-Content-Digest") == digest, describe(resp)
    for descriptor in [manifest["config"], *manifest["layers"]]:
        blob = api.assert_blob(repo, descriptor["digest"])
        assert len(blob) == descriptor["size"], f"size mismatch for {descriptor['digest']}"
    return manifest


RANGE_RE = re.compile(r"^0-(\d+)$")


def parse_range_end(resp: requests.Response) -> int:
    """The inclusive end offset N of a `Range: 0-N` upload-progress header."""
    value = resp.headers.get("Range", "")
    match = RANGE_RE.match(value.strip())
    assert match, f"upload Range header is not '0-N': {value!r}\n{describe(resp)}"
    return int(match.group(1))


class ThrottledProxy:
    """A TCP forwarder on a free loopback port to `upstream` ("HOST:PORT") that
    passes client->server bytes at `rate` bytes/s in total over all connections
    (server->client bytes are not slowed). Makes a push take as long as a test
    needs. Use as a context manager; `.host` is "localhost:PORT" (docker treats
    it as an insecure registry, and wharf's token realm follows the Host header)."""

    CHUNK = 64 * 1024

    def __init__(self, upstream: str, rate: float):
        up_host, _, up_port = upstream.rpartition(":")
        self.upstream = (up_host, int(up_port))
        self.rate = rate
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.host = f"localhost:{self.port}"
        self._lock = threading.Lock()
        self._next_free = time.monotonic()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self.bytes_up = 0

    def __enter__(self) -> "ThrottledProxy":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._closed = True
        self.listener.close()
        for s in list(self._sockets):
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _throttle(self, n: int) -> None:
        with self._lock:
            start = max(time.monotonic(), self._next_free)
            self._next_free = start + n / self.rate
            self.bytes_up += n
            until = self._next_free
        delay = until - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _pump(self, src: socket.socket, dst: socket.socket, throttled: bool) -> None:
        try:
            while True:
                data = src.recv(self.CHUNK)
                if not data:
                    break
                if throttled:
                    self._throttle(len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
