"""Helpers for the wharf-runner end-to-end tests: the daemon process and its
CLI, finding what a container may have left behind (mounts, cgroups, dirs,
processes), reading a container's cgroup from the host, and a builder for raw
OCI/docker images pushed straight through the registry API (the busybox base,
a 100-layer image, malicious layers).

Nothing here knows about pytest; conftest.py turns these into fixtures.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import platform
import re
import secrets
import signal
import socket
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from clients import BUSYBOX, BUSYBOX_APPLETS, BUSYBOX_GROUP, BUSYBOX_PASSWD
from support import REPO_ROOT, RegistryApi, describe, run, sha256_digest

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0
ID_RE = re.compile(r"^[0-9a-f]{64}$")
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "wharf"
# What `docker run` hands a container when it does not say otherwise.
DOCKER_DEFAULT_CAPS = "00000000a80425fb"
NOT_RUNNING_HINT = "Is the daemon running?"


def runner_binary() -> Path:
    """WHARF_RUNNER_BIN, else $CARGO_TARGET_DIR (or ./target)/debug/wharf-runner."""
    explicit = os.environ.get("WHARF_RUNNER_BIN")
    if explicit:
        return Path(explicit)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO_ROOT / "target")
    return target / "debug" / "wharf-runner"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    """Poll `predicate` until it returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_unix_socket_path() -> str:
    """A socket path where nothing exists (not even its directory)."""
    return f"/tmp/wr-missing-{os.getpid()}-{time.monotonic_ns()}/runner.sock"


def output(proc: subprocess.CompletedProcess) -> str:
    """Both streams of a finished command, for assertion messages."""
    args = proc.args if isinstance(proc.args, str) else " ".join(map(str, proc.args))
    return f"$ {args}\n(exit {proc.returncode})\n--- stdout ---\n{proc.stdout}--- stderr ---\n{proc.stderr}"


# --------------------------------------------------------------------------- daemon


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a unix socket (the daemon's API)."""

    def __init__(self, path: str, timeout: float = 5.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def api_request(socket_path: Path, method: str, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(str(socket_path), timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class RunnerDaemon:
    """One `wharf-runner daemon` with its own root dir and socket, its log in a
    file (appended to across restarts, one header line per start).

    `cli(...)` runs the client binary against it (WHARF_RUNNER_SOCKET)."""

    def __init__(
        self,
        binary: Path,
        root: Path,
        socket_path: Path,
        log_path: Path,
        default_registry: str,
        insecure_registries: tuple[str, ...] = (),
        default_runtime: str | None = None,
        bridge: str | None = None,
        bridge_subnet: str | None = None,
    ):
        self.binary = binary
        # `--bridge`/`--bridge-subnet`: each test daemon gets its own, so
        # daemons running at once never share one (see remove_bridge).
        self.bridge = bridge
        self.bridge_subnet = bridge_subnet
        self.root = root
        self.socket = socket_path
        self.log_path = log_path
        self.default_registry = default_registry
        self.insecure_registries = tuple(insecure_registries)
        self.default_runtime = default_runtime
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    # --- process ---
    def command(self) -> list[str]:
        cmd = [str(self.binary), "daemon", "--root", str(self.root), "--socket", str(self.socket)]
        cmd += ["--default-registry", self.default_registry]
        for host in self.insecure_registries:
            cmd += ["--insecure-registry", host]
        if self.default_runtime:
            cmd += ["--default-runtime", self.default_runtime]
        if self.bridge:
            cmd += ["--bridge", self.bridge]
        if self.bridge_subnet:
            cmd += ["--bridge-subnet", self.bridge_subnet]
        return cmd

    def remove_bridge(self) -> None:
        """Deletes the daemon's bridge (the daemon keeps it across restarts)."""
        if self.bridge and Path(f"/sys/class/net/{self.bridge}").exists():
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.running, "daemon is not running"
        return self.proc.pid

    def start(self) -> None:
        assert not self.running, "daemon already running"
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        env = {**os.environ, "NO_COLOR": "1", "RUST_BACKTRACE": "1"}
        env.setdefault("RUST_LOG", "info")
        env.pop("WHARF_RUNNER_SOCKET", None)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== wharf-runner daemon start #{self.starts} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, start_new_session=True
            )
        self._wait_ready()

    def ping(self) -> bool:
        try:
            status, body = api_request(self.socket, "GET", "/_ping", timeout=2)
        except OSError:
            return False
        return status == 200 and body.strip() == b"OK"

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"wharf-runner daemon exited with {self.proc.returncode} before it answered\n{self.log_tail()}"
                )
            if self.ping():
                return
            time.sleep(0.05)
        raise AssertionError(f"wharf-runner daemon did not answer GET /_ping in {READY_TIMEOUT}s\n{self.log_tail()}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Graceful stop: SIGTERM and wait (SIGKILL if it hangs, and say so)."""
        if not self.running:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"wharf-runner daemon ignored SIGTERM for {timeout}s\n{self.log_tail()}")

    def kill9(self) -> None:
        assert self.running, "daemon is not running"
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    # --- client ---
    def cli_env(self, env: dict | None = None) -> dict:
        full = {**os.environ, "NO_COLOR": "1", "WHARF_RUNNER_SOCKET": str(self.socket)}
        full.update(env or {})
        return full

    def cli(
        self,
        *args,
        check: bool = True,
        input: str | None = None,
        timeout: float = CLI_TIMEOUT,
        env: dict | None = None,
    ) -> subprocess.CompletedProcess:
        """`wharf-runner ARGS...` with stdin, stdout and stderr not a terminal."""
        kwargs = {"input": input} if input is not None else {}
        return run([self.binary, *args], check=check, timeout=timeout, env=self.cli_env(env), **kwargs)

    def popen(self, *args, env: dict | None = None) -> subprocess.Popen:
        return subprocess.Popen(
            [str(self.binary), *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.cli_env(env),
        )

    def inspect(self, name: str) -> dict:
        objects = json.loads(self.cli("inspect", name).stdout)
        assert isinstance(objects, list) and len(objects) == 1, objects
        return objects[0]

    def fmt(self, name: str, template: str) -> str:
        return self.cli("inspect", "-f", template, name).stdout.strip()

    def all_ids(self) -> list[str]:
        out = self.cli("ps", "-a", "-q", "--no-trunc").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    # --- log ---
    def log_text(self, since: int = 0) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def panics(self, since: int = 0) -> list[str]:
        return [line for line in self.log_text(since).splitlines() if "panicked" in line]

    def log_tail(self, lines: int = 200, since: int = 0) -> str:
        text = self.log_text(since).splitlines()
        return f"--- wharf-runner daemon log {self.log_path} (last {lines} lines) ---\n" + "\n".join(text[-lines:])


# --------------------------------------------------------------------------- leftovers


def _unescape_mountinfo(field_text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field_text)


def mount_points(pid: int | str = "self") -> list[str]:
    """Mount points of a process's mount namespace (field 5 of mountinfo)."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [_unescape_mountinfo(line.split()[4]) for line in f if line.strip()]


def mounts_under(path: Path, pid: int | str = "self") -> list[str]:
    prefix = str(path).rstrip("/")
    return [m for m in mount_points(pid) if m == prefix or m.startswith(prefix + "/")]


def cgroup_dirs(container_id: str) -> list[Path]:
    """The container's cgroup directories that exist: `<controller>/wharf/<id>`
    on cgroup v1 (and hybrid's unified mount), `wharf/<id>` on pure v2."""
    found = list(CGROUP_ROOT.glob(f"*/{CGROUP_PARENT}/{container_id}"))
    direct = CGROUP_ROOT / CGROUP_PARENT / container_id
    if direct.is_dir():
        found.append(direct)
    return sorted(found)


def cgroup_file(container_id: str, *names: str) -> Path:
    """The first of `names` (e.g. "cpuacct.usage", "cpu.stat") found in the
    container's cgroup dirs; fails listing what exists."""
    dirs = cgroup_dirs(container_id)
    for name in names:
        for d in dirs:
            if (d / name).is_file():
                return d / name
    raise AssertionError(f"none of {names} in the cgroup dirs of {container_id}: {dirs}")


def read_keyed(path: Path) -> dict[str, int]:
    """A flat-keyed cgroup file (`cpu.stat`, `pids.events`): name -> number."""
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def cpu_usage_ns(container_id: str) -> int:
    """CPU time the container's cgroup used: cpuacct.usage (v1) or cpu.stat usage_usec (v2)."""
    path = cgroup_file(container_id, "cpuacct.usage", "cpu.stat")
    if path.name == "cpuacct.usage":
        return int(path.read_text().strip())
    return read_keyed(path)["usage_usec"] * 1000


def cpu_quota(container_id: str) -> float:
    """quota/period of the container's cpu cgroup (0.5 = half a CPU)."""
    path = cgroup_file(container_id, "cpu.cfs_quota_us", "cpu.max")
    if path.name == "cpu.max":
        quota, period = path.read_text().split()
        return int(quota) / int(period)
    period = int((path.parent / "cpu.cfs_period_us").read_text())
    return int(path.read_text()) / period


def paths_naming(root: Path, needle: str) -> list[Path]:
    """Files and dirs under `root` whose name contains `needle` (a container id).
    Unpacked image layers (`layers/<hex>/diff`) are not walked: no container
    lives there and they are big."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here.parent.name == "layers":
            dirnames[:] = [d for d in dirnames if d != "diff"]
        for name in dirnames + filenames:
            if needle in name:
                found.append(here / name)
    return found


def processes_naming(needle: str) -> list[str]:
    """`pid: cmdline` of processes whose command line mentions `needle`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def leftovers(daemon: RunnerDaemon, ids) -> list[str]:
    """Everything removed containers left behind: any mount under the
    daemon's root (in this and in the daemon's mount namespace), and per
    container id a cgroup dir, a file or dir named after it, a process
    naming it."""
    problems = [f"mount {m}" for m in mounts_under(daemon.root)]
    if daemon.running:
        problems += [f"mount {m} (daemon's namespace)" for m in mounts_under(daemon.root, daemon.pid)]
    for cid in ids:
        veth = Path("/sys/class/net") / f"wr{cid[:11]}"
        if veth.exists():
            problems.append(f"veth {veth.name}")
        problems += [f"cgroup {d}" for d in cgroup_dirs(cid)]
        problems += [f"path {p}" for p in paths_naming(daemon.root, cid)]
        problems += [f"process {p}" for p in processes_naming(cid)]
    return sorted(set(problems))


_test_bridges = 0


def unique_bridge() -> tuple[str, str]:
    """A bridge name and /24 subnet no other daemon on this host uses (other
    test processes included): a name with this process's pid, a 10.91.X.0/24
    no interface has an address in."""
    global _test_bridges
    _test_bridges += 1
    name = f"wt{os.getpid() % 100000}-{_test_bridges}"
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    taken = set(re.findall(r"inet 10\.91\.(\d+)\.", used))
    start = (os.getpid() * 7 + _test_bridges * 13) % 250 + 1
    for i in range(250):
        x = (start + i) % 250 + 1
        if str(x) not in taken:
            return name[:15], f"10.91.{x}.0/24"
    raise AssertionError("no free 10.91.X.0/24 subnet for a test bridge")


def wait_no_leftovers(daemon: RunnerDaemon, ids, timeout: float = 10.0) -> list[str]:
    """Leftovers still there after `timeout` (cleanup may finish just after `rm` answers)."""
    deadline = time.monotonic() + timeout
    while True:
        found = leftovers(daemon, ids)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# --------------------------------------------------------------------------- images

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EPOCH = 1_700_000_000


@dataclass
class Entry:
    """One tar entry, written exactly as given (names may hold `../`)."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""

    def tarinfo(self) -> tarfile.TarInfo:
        info = tarfile.TarInfo(self.name)
        info.type = self.kind
        info.mode = self.mode
        info.mtime = EPOCH
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.linkname = self.linkname
        info.size = len(self.data) if self.kind == tarfile.REGTYPE else 0
        return info


def file_entry(name: str, data: bytes | str, mode: int = 0o644) -> Entry:
    return Entry(name, tarfile.REGTYPE, data.encode() if isinstance(data, str) else data, mode)


def dir_entry(name: str, mode: int = 0o755) -> Entry:
    return Entry(name, tarfile.DIRTYPE, mode=mode)


def symlink_entry(name: str, target: str) -> Entry:
    return Entry(name, tarfile.SYMTYPE, mode=0o777, linkname=target)


def hardlink_entry(name: str, target: str) -> Entry:
    return Entry(name, tarfile.LNKTYPE, linkname=target)


@dataclass
class Layer:
    tar: bytes  # uncompressed
    blob: bytes  # gzip, what the registry stores
    digest: str  # of the blob
    diff_id: str  # of the tar

    @property
    def short_id(self) -> str:
        """What pull progress calls the layer: 12 hex digits of its digest."""
        return self.digest.split(":", 1)[1][:12]


def make_layer(entries: list[Entry], compresslevel: int = 9) -> Layer:
    buf = io.BytesIO()
    # GNU format: long names (the `../` escapes) need no PAX headers.
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for entry in entries:
            info = entry.tarinfo()
            tar.addfile(info, io.BytesIO(entry.data) if info.size else None)
    raw = buf.getvalue()
    blob = gzip.compress(raw, compresslevel=compresslevel, mtime=0)
    return Layer(raw, blob, sha256_digest(blob), sha256_digest(raw))


def busybox_entries() -> list[Entry]:
    """The busybox test image's rootfs (as clients.TestImages builds it for
    docker): /bin/busybox, applet symlinks, /etc/passwd and /etc/group."""
    entries = [dir_entry(d) for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "root")]
    entries[2].mode = 0o1777
    entries.append(file_entry("bin/busybox", BUSYBOX.read_bytes(), mode=0o755))
    entries += [symlink_entry(f"bin/{applet}", "busybox") for applet in BUSYBOX_APPLETS]
    entries.append(file_entry("etc/passwd", BUSYBOX_PASSWD))
    entries.append(file_entry("etc/group", BUSYBOX_GROUP))
    return entries


def go_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}.get(
        machine, machine
    )


@dataclass
class Image:
    """An image made of `layers` (bottom first) and a config; `push` sends it
    through the registry API in OCI or docker schema 2 media types."""

    layers: list[Layer]
    cmd: list[str] = field(default_factory=lambda: ["/bin/sh"])
    env: list[str] = field(default_factory=lambda: [DEFAULT_PATH])
    entrypoint: list[str] | None = None
    workdir: str = ""
    exposed_ports: list[str] = field(default_factory=list)  # "80/tcp"

    def config(self) -> bytes:
        cfg = {"Cmd": self.cmd, "Env": self.env}
        if self.exposed_ports:
            cfg["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.entrypoint is not None:
            cfg["Entrypoint"] = self.entrypoint
        if self.workdir:
            cfg["WorkingDir"] = self.workdir
        doc = {
            "architecture": go_arch(),
            "os": "linux",
            "created": "2023-11-14T22:13:20Z",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in self.layers]},
            "history": [{"created": "2023-11-14T22:13:20Z", "created_by": "wharf e2e"} for _ in self.layers],
        }
        return json.dumps(doc, sort_keys=True).encode()

    @property
    def config_digest(self) -> str:
        """docker's image id."""
        return sha256_digest(self.config())

    def manifest(self, docker: bool = False) -> tuple[bytes, str]:
        config = self.config()
        manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        doc = {
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "digest": sha256_digest(config),
                       "size": len(config)},
            "layers": [
                {"mediaType": DOCKER_LAYER_GZIP if docker else OCI_LAYER_GZIP, "digest": layer.digest,
                 "size": len(layer.blob)}
                for layer in self.layers
            ],
        }  # fmt: skip
        return json.dumps(doc, indent=3).encode(), manifest_type

    def push(self, api: RegistryApi, repo: str, tag: str, docker: bool = False) -> str:
        """Uploads missing blobs and PUTs the manifest; returns its digest."""
        for blob in [self.config(), *(layer.blob for layer in self.layers)]:
            push_blob(api, repo, blob)
        raw, media_type = self.manifest(docker)
        resp = api.request("PUT", f"/v2/{repo}/manifests/{tag}", data=raw, headers={"Content-Type": media_type})
        assert resp.status_code == 201, describe(resp)
        digest = sha256_digest(raw)
        assert resp.headers.get("Docker-Content-Digest", digest) == digest, describe(resp)
        return digest


def push_blob(api: RegistryApi, repo: str, blob: bytes) -> str:
    digest = sha256_digest(blob)
    if api.request("HEAD", f"/v2/{repo}/blobs/{digest}").status_code == 200:
        return digest
    resp = api.monolithic_upload(repo, blob, digest)
    assert resp.status_code == 201, describe(resp)
    return digest


_busybox_layer: Layer | None = None


def busybox_layer() -> Layer:
    """The busybox rootfs as one layer (built once per process: 2 MB)."""
    global _busybox_layer
    if _busybox_layer is None:
        _busybox_layer = make_layer(busybox_entries())
    return _busybox_layer


def busybox_image(*extra_layers: Layer, **kwargs) -> Image:
    return Image([busybox_layer(), *extra_layers], **kwargs)


def marker_layer(path: str, content: str) -> Layer:
    """A small layer holding one file (a unique layer to pull)."""
    parts = path.strip("/").split("/")
    dirs = ["/".join(parts[:i]) for i in range(1, len(parts))]
    return make_layer([*(dir_entry(d) for d in dirs), file_entry("/".join(parts), content)])


MANY_LAYERS = 100


def many_layers_image(count: int = MANY_LAYERS) -> Image:
    """`count` layers: the first has busybox and /layers/f000, each next one
    adds one file /layers/fNNN holding "layer NNN"."""
    layers = []
    for i in range(count):
        entries = busybox_entries() + [dir_entry("layers")] if i == 0 else [dir_entry("layers")]
        entries.append(file_entry(f"layers/f{i:03d}", f"layer {i:03d}\n"))
        layers.append(make_layer(entries))
    return Image(layers)


def escape(path: Path) -> str:
    """A relative tar path that climbs out of any directory up to / and
    then down to `path`."""
    return "../" * 64 + str(path).lstrip("/")


@dataclass
class EvilTargets:
    """Host paths a malicious layer tries to reach, made before the pull:
    `victim` (a file with known content), `target_dir` (an empty dir) and
    `dotdot_file` (must never exist)."""

    base: Path

    def __post_init__(self):
        self.base.mkdir(parents=True, exist_ok=True)
        self.victim = self.base / "victim"
        self.victim.write_text(VICTIM_TEXT)
        self.target_dir = self.base / "target-dir"
        self.target_dir.mkdir(exist_ok=True)
        self.dotdot_file = self.base / "dotdot-file"

    def problems(self) -> list[str]:
        """What the pull changed on the host (empty when nothing)."""
        found = []
        if self.victim.read_text() != VICTIM_TEXT:
            found.append(f"{self.victim} was overwritten: {self.victim.read_text()!r}")
        if self.victim.stat().st_nlink != 1:
            found.append(f"{self.victim} got a hard link (st_nlink={self.victim.stat().st_nlink})")
        inside = sorted(p.name for p in self.target_dir.iterdir())
        if inside:
            found.append(f"{self.target_dir} got entries {inside}")
        if self.dotdot_file.exists() or self.dotdot_file.is_symlink():
            found.append(f"{self.dotdot_file} was created")
        extra = sorted(p.name for p in self.base.iterdir() if p.name not in ("victim", "target-dir"))
        if extra:
            found.append(f"{self.base} got entries {extra}")
        return found


VICTIM_TEXT = "original victim content\n"
EVIL_KINDS = ("dotdot", "absolute-symlink", "relative-symlink", "hardlink-absolute", "hardlink-relative")


def evil_layer(kind: str, targets: EvilTargets) -> Layer:
    """One malicious layer per kind, each trying to write outside its dir:
    - dotdot: a file entry `../../…/<dotdot_file>`;
    - absolute-symlink / relative-symlink: `evil -> <target_dir>` (absolute, or
      `../../…`), then `evil/file` written through it;
    - hardlink-absolute / hardlink-relative: `link` hard-linked to `<victim>`
      (absolute name, or `../../…`), then a regular file `link` written over it.
    Each starts with a harmless file so the bad entry is not the first."""
    entries = [dir_entry("ok"), file_entry("ok/harmless", "fine\n")]
    if kind == "dotdot":
        entries.append(file_entry(escape(targets.dotdot_file), "pwned\n"))
    elif kind == "absolute-symlink":
        entries += [symlink_entry("evil", str(targets.target_dir)), file_entry("evil/file", "pwned\n")]
    elif kind == "relative-symlink":
        entries += [symlink_entry("evil", escape(targets.target_dir)), file_entry("evil/file", "pwned\n")]
    elif kind == "hardlink-absolute":
        entries += [hardlink_entry("link", str(targets.victim)), file_entry("link", "pwned\n")]
    elif kind == "hardlink-relative":
        entries += [hardlink_entry("link", escape(targets.victim)), file_entry("link", "pwned\n")]
    else:
        raise ValueError(kind)
    return make_layer(entries)


def layer_names(blob: bytes) -> list[tuple[str, str]]:
    """(name, linkname) of every entry of a gzip layer blob."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(blob))) as tar:
        return [(m.name, m.linkname) for m in tar.getmembers()]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
