"""The fleet node agent of wharf-runner (issue #7), end to end: a real
`wharf-runner daemon --join` against a small fake control plane written here
(the fleet-proto endpoints over plain HTTP on loopback), pulling a real image
from a real wharf-server registry with auth on, as the robot `node.NAME` whose
secret the fake hands out as the node credential, and running real containers.

What is checked: join (facts, node.json 0600, join errors with one clear line
and a non-zero exit, a second start without a token, a --join naming another
server refused), heartbeats, Assign -> pulling -> running / exited(code) /
failed(pull denied), the containers' names and labels, logs (tail and follow)
uploaded as NDJSON, undesired replicas removed, a daemon restart and a control
plane outage leaving containers running and reconciling from the runner's own
catalog, the full set reported after a reconnect, and the secret never in the
daemon's log. The real server side is tested with its own tests and by the
coordinator's netns LAN test.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import _cleanup_daemon
from pg import make_ca, make_cert
from runner_support import RunnerDaemon, busybox_image, output, runner_binary, unique_bridge, wait_for
from support import AUTH_ENV, free_port

REPLICA_LABEL = "io.wharf.fleet.replica"
DEPLOYMENT_LABEL = "io.wharf.fleet.deployment"
NODE = "n1"
TOKEN = "join-token-for-e2e-0123456789"


# --------------------------------------------------------------------------- fake control plane


class FakeControlPlane:
    """The node side of the fleet-proto endpoints, recording what the node
    says. `assign(replicas)` sets the desired set (sent on connect and pushed
    to open channels), `request_logs(...)` asks for logs, `down = True` makes
    every call fail with 503 and closes the channels (an outage)."""

    def __init__(self, registry: str, secret: str, tls: tuple[Path, Path] | None = None):
        self.registry = registry
        self.secret = secret
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.tokens = {TOKEN}
        self.taken_names = {"taken"}
        self.joins: list[dict] = []
        self.heartbeats: list[dict] = []
        self.reports: list[dict] = []  # each status with "at" (monotonic)
        self.channel_connects = 0
        self.desired: list[dict] = []
        self.channels: list[queue.Queue] = []
        self.logs: dict[str, list[dict]] = {}
        self.logs_done: dict[str, bool] = {}
        self.logs_close: set[str] = set()
        self.down = False
        self.bad_auth: list[str] = []
        # A report naming this replica among others is refused whole (403).
        self.refuse_batches_with = "priv.0"
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self.server.daemon_threads = True
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.set_down(True)
        self.server.shutdown()
        self.server.server_close()

    # --- driving it ---
    def assign(self, replicas: list[dict]) -> None:
        with self.lock:
            self.desired = replicas
            for q in self.channels:
                q.put({"type": "assign", "replicas": replicas})

    def request_logs(self, request: str, replica: str, follow: bool, tail: int | None = None) -> None:
        with self.lock:
            self.logs[request] = []
            self.logs_done[request] = False
            for q in self.channels:
                q.put({"type": "logs", "request": request, "replica": replica, "follow": follow, "tail": tail})

    def set_down(self, down: bool) -> None:
        with self.lock:
            self.down = down
            if down:
                for q in self.channels:
                    q.put(None)

    # --- reading what the node said ---
    def statuses(self, replica: str, since: float = 0.0) -> list[dict]:
        with self.lock:
            return [r for r in self.reports if r["id"] == replica and r["at"] >= since]

    def last(self, replica: str, since: float = 0.0) -> dict | None:
        s = self.statuses(replica, since)
        return s[-1] if s else None

    def wait_state(self, replica: str, state: str, since: float = 0.0, timeout: float = 60) -> dict:
        return wait_for(
            lambda: next((r for r in reversed(self.statuses(replica, since)) if r["state"] == state), None),
            timeout,
            f"{replica} reported {state} (reports: {self.statuses(replica, since)[-5:]})",
        )

    # --- the HTTP side ---
    def _handler(self):
        plane = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    return b"".join(self._chunks())
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _chunks(self):
                while True:
                    size_line = self.rfile.readline()
                    if not size_line:
                        return
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return
                    data = self.rfile.read(size)
                    self.rfile.readline()
                    yield data

            def _node_ok(self) -> bool:
                expected = "Basic " + base64.b64encode(f"{NODE}:{plane.secret}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    plane.bad_auth.append(self.path)
                    self._send(401, {"message": "unknown node credential"})
                    return False
                return True

            def do_POST(self):
                if plane.down:
                    self._send(503, {"message": "control plane down"})
                    return
                if self.path == "/api/v1/nodes/join":
                    req = json.loads(self._body())
                    with plane.lock:
                        plane.joins.append(req)
                        if req["token"] not in plane.tokens:
                            self._send(401, {"message": "join token expired or already used"})
                            return
                        if req["name"] in plane.taken_names:
                            self._send(409, {"message": f"node name {req['name']} is taken"})
                            return
                        plane.tokens.discard(req["token"])
                        plane.taken_names.add(req["name"])
                    self._send(
                        200,
                        {"name": req["name"], "secret": plane.secret, "heartbeat_secs": 1, "registry": plane.registry},
                    )
                    return
                if not self._node_ok():
                    return
                if self.path == "/api/v1/node/heartbeat":
                    hb = json.loads(self._body())
                    with plane.lock:
                        plane.heartbeats.append({**hb, "at": time.monotonic()})
                    self._send(204)
                elif self.path == "/api/v1/node/report":
                    report = json.loads(self._body())
                    ids = [r["id"] for r in report["replicas"]]
                    if plane.refuse_batches_with in ids and len(ids) > 1:
                        # As the server does for a replica it no longer counts as the node's.
                        self._send(403, {"message": f"replica {plane.refuse_batches_with} is not yours"})
                        return
                    now = time.monotonic()
                    with plane.lock:
                        plane.reports += [{**r, "at": now} for r in report["replicas"]]
                    self._send(204)
                elif self.path.startswith("/api/v1/node/logs/"):
                    request = self.path.rsplit("/", 1)[1]
                    pending = b""
                    chunks = self._chunks() if "chunked" in self.headers.get("Transfer-Encoding", "") else [self._body()]
                    for chunk in chunks:
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        with plane.lock:
                            plane.logs.setdefault(request, []).extend(json.loads(x) for x in lines if x.strip())
                            close = request in plane.logs_close
                        if close:
                            break
                    with plane.lock:
                        plane.logs_done[request] = True
                    # Answer and close the connection: the node stops uploading.
                    self._send(204)
                    self.close_connection = True
                else:
                    self._send(404, {"message": "no such endpoint"})

            def do_GET(self):
                if plane.down:
                    self._send(503, {"message": "control plane down"})
                    return
                if self.path != "/api/v1/node/channel":
                    self._send(404, {"message": "no such endpoint"})
                    return
                if not self._node_ok():
                    return
                q: queue.Queue = queue.Queue()
                with plane.lock:
                    plane.channel_connects += 1
                    plane.channels.append(q)
                    q.put({"type": "assign", "replicas": plane.desired})
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.end_headers()
                try:
                    while True:
                        try:
                            msg = q.get(timeout=1)
                        except queue.Empty:
                            msg = {"type": "ping"}
                        if msg is None:
                            return
                        self.wfile.write(json.dumps(msg).encode() + b"\n")
                        self.wfile.flush()
                except OSError:
                    return
                finally:
                    with plane.lock:
                        plane.channels.remove(q)

        return Handler


# --------------------------------------------------------------------------- fixtures


class FleetDaemon(RunnerDaemon):
    """A RunnerDaemon with `daemon` flags of the fleet (`extra`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra: list[str] = []

    def command(self) -> list[str]:
        return super().command() + self.extra

    def run_once(self, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """The daemon run in the foreground with these fleet flags, expected
        to end by itself (a refused join)."""
        env = {**os.environ, "NO_COLOR": "1", "RUST_LOG": "warn"}
        env.pop("WHARF_RUNNER_JOIN_TOKEN", None)
        self.root.mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            [*RunnerDaemon.command(self), *extra], capture_output=True, text=True, timeout=timeout, env=env
        )


@pytest.fixture
def registry(wharf_factory):
    """A wharf-server with auth on: `fleet/busybox` pushed by an admin, the
    robot `node.n1` allowed to pull `fleet/*` only, `private/busybox` it may
    not pull."""
    server = wharf_factory("fleet-registry", env=AUTH_ENV)
    server.add_user("admin", admin=True)
    server.add_robot(f"node.{NODE}", "fleet/*")
    server.start()
    api = server.api("admin").authorize("repository:fleet/busybox:pull,push", "repository:private/busybox:pull,push")
    busybox_image().push(api, "fleet/busybox", "latest", docker=True)
    busybox_image().push(api, "private/busybox", "latest", docker=True)
    return server


@pytest.fixture
def plane(registry):
    with FakeControlPlane(registry.host, registry.users[f"node.{NODE}"]) as p:
        yield p


@pytest.fixture
def node(request, registry, tmp_path):
    binary = runner_binary()
    if not binary.is_file():
        pytest.fail(f"wharf-runner binary not found at {binary}: run `cargo build -p wharf-runner`")
    sock_dir = Path(tempfile.mkdtemp(prefix="wr-", dir="/tmp"))
    bridge, subnet = unique_bridge()
    daemon = FleetDaemon(
        binary, tmp_path / "root", sock_dir / "runner.sock", tmp_path / "daemon.log", registry.docker_host,
        bridge=bridge, bridge_subnet=subnet,
    )
    yield daemon
    problems = []
    if daemon.proc is not None:
        # The fleet's containers outlive the agent: remove them by hand.
        daemon.extra = [x for x in daemon.extra if x != "--token"]
        problems = _cleanup_daemon(daemon, set(), 0)
        daemon.stop()
    daemon.remove_bridge()
    leaked = [s for s in (registry.users.get(f"node.{NODE}"), TOKEN) if s and s in daemon.log_text()]
    if leaked:
        problems.append("the daemon's log holds the node secret or the join token")
    if problems or getattr(getattr(request.node, "rep_call", None), "failed", False):
        print(daemon.log_tail())
    shutil.rmtree(sock_dir, ignore_errors=True)
    assert not problems, "after the test:\n" + "\n".join(problems)


def replica(rid: str, image: str, cmd: list[str], generation: int = 1, **extra) -> dict:
    return {
        "id": rid,
        "deployment": rid.split(".")[0],
        "generation": generation,
        "image": image,
        "env": extra.pop("env", []),
        "ports": extra.pop("ports", []),
        "memory_bytes": extra.pop("memory_bytes", None),
        "nano_cpus": extra.pop("nano_cpus", None),
        "restart": extra.pop("restart", None),
        "cmd": cmd,
    }


def container(node: FleetDaemon, name: str) -> dict | None:
    proc = node.cli("inspect", name, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout)[0]


def fleet_containers(node: FleetDaemon) -> list[str]:
    names = []
    for cid in node.all_ids():
        info = container(node, cid)
        if info and REPLICA_LABEL in (info["Config"].get("Labels") or {}):
            names.append(info["Name"].lstrip("/"))
    return sorted(names)


# --------------------------------------------------------------------------- tests


def test_join_errors_end_the_daemon_with_one_clear_line(plane, node):
    bad = node.run_once("--join", plane.url, "--token", "not-a-token", "--node-name", NODE)
    assert bad.returncode != 0, output(bad)
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "join token was refused" in lines[0], output(bad)
    assert "not-a-token" not in bad.stderr
    assert not (node.root / "node.json").exists()

    taken = node.run_once("--join", plane.url, "--token", TOKEN, "--node-name", "taken")
    assert taken.returncode != 0, output(taken)
    assert "is taken" in taken.stderr and "--node-name" in taken.stderr, output(taken)
    assert not (node.root / "node.json").exists()

    no_token = node.run_once("--join", plane.url, "--node-name", NODE)
    assert no_token.returncode != 0 and "--token" in no_token.stderr, output(no_token)
    bad_url = node.run_once("--join", "ftp://x", "--token", TOKEN)
    assert bad_url.returncode != 0 and "--join" in bad_url.stderr, output(bad_url)
    bad_label = node.run_once("--join", plane.url, "--token", TOKEN, "--label", "novalue")
    assert bad_label.returncode != 0 and "label" in bad_label.stderr, output(bad_label)
    # No join was made by the refused ones after the first two.
    assert len(plane.joins) == 2


def test_agent_runs_what_it_is_assigned_and_reconciles(plane, node, registry):
    image = f"{registry.host}/fleet/busybox:latest"
    node.extra = ["--join", plane.url + "/", "--token", TOKEN, "--node-name", NODE, "--label", "zone=a"]
    node.start()

    # --- joined: facts, node.json 0600 ---
    assert len(plane.joins) == 1
    facts = plane.joins[0]["facts"]
    assert plane.joins[0]["name"] == NODE
    assert facts["os"] == "linux" and facts["arch"] in ("amd64", "arm64"), facts
    assert facts["cpus"] == len(os.sched_getaffinity(0)) or 1 <= facts["cpus"] <= os.cpu_count(), facts
    assert facts["memory_bytes"] > 0 and facts["disk_bytes"] > 0, facts
    assert facts["labels"] == {"zone": "a"} and facts["version"], facts
    assert all(not a.startswith("127.") and a != "::1" for a in facts["addresses"]), facts
    node_json = node.root / "node.json"
    assert stat.S_IMODE(node_json.stat().st_mode) == 0o600
    stored = json.loads(node_json.read_text())
    assert stored["server"] == plane.url and stored["name"] == NODE
    assert stored["registry"] == registry.host and stored["secret"] == plane.secret

    # --- heartbeats, every heartbeat_secs (1 s) ---
    wait_for(lambda: len(plane.heartbeats) >= 2, 10, "two heartbeats")
    hb = plane.heartbeats[-1]
    assert hb["facts"]["labels"] == {"zone": "a"} and hb["free_memory_bytes"] > 0, hb
    assert plane.bad_auth == []

    # --- Assign: running, exited(3), failed (pull denied) ---
    t0 = time.monotonic()
    plane.assign([
        replica("web.0", image, ["sh", "-c", "echo hello; while true; do echo tick; sleep 0.3; done"], env=["A=1"]),
        replica("job.0", image, ["sh", "-c", "echo bye >&2; exit 3"], generation=4),
        replica("priv.0", f"{registry.host}/private/busybox:latest", ["true"]),
    ])
    web = plane.wait_state("web.0", "running", t0)
    assert web["generation"] == 1 and web["container_id"], web
    assert plane.statuses("web.0", t0)[0]["state"] == "pulling"
    job = plane.wait_state("job.0", "exited", t0)
    assert job["exit_code"] == 3 and job["generation"] == 4, job
    # priv.0 got every batch it was in refused: the others came one by one.
    priv = plane.wait_state("priv.0", "failed", t0)
    assert "denied" in priv["reason"].lower() and "\n" not in priv["reason"], priv
    info = container(node, "web.0")
    assert info["Id"] == web["container_id"] and info["State"]["Running"], info["State"]
    assert info["Config"]["Labels"][REPLICA_LABEL] == "web.0"
    assert info["Config"]["Labels"][DEPLOYMENT_LABEL] == "web"
    assert "A=1" in info["Config"]["Env"]
    assert container(node, "priv.0") is None  # nothing half-deployed
    # A failed replica is not retried at once (no report storm).
    time.sleep(2)
    assert [s["state"] for s in plane.statuses("priv.0", t0)].count("pulling") == 1

    # --- logs: tail, then follow until the server closes the upload ---
    plane.request_logs("req-tail", "job.0", follow=False, tail=10)
    wait_for(lambda: plane.logs_done.get("req-tail"), 20, "the tail upload to end")
    assert [(x["replica"], x["stream"], x["line"]) for x in plane.logs["req-tail"]] == [("job.0", "stderr", "bye")]
    assert plane.logs["req-tail"][0]["time"].startswith("20")
    plane.request_logs("req-follow", "web.0", follow=True)
    wait_for(lambda: [x for x in plane.logs.get("req-follow", []) if x["line"] == "tick"][2:], 20, "three ticks followed")
    assert plane.logs["req-follow"][0]["line"] == "hello"
    with plane.lock:
        plane.logs_close.add("req-follow")
    wait_for(lambda: plane.logs_done.get("req-follow"), 20, "the follow upload to end")
    plane.request_logs("req-other", "not-ours.0", follow=False)
    wait_for(lambda: plane.logs_done.get("req-other"), 20, "the upload for an unknown replica to end")
    assert plane.logs["req-other"] == []

    # --- a daemon restart: containers keep running, the full set is reported again ---
    node.extra = ["--join", plane.url]  # no token: node.json is used
    node.stop()
    t1 = time.monotonic()
    node.start()
    assert len(plane.joins) == 1
    again = plane.wait_state("web.0", "running", t1)
    assert again["container_id"] == web["container_id"]
    plane.wait_state("job.0", "exited", t1)
    plane.wait_state("priv.0", "failed", t1)
    assert container(node, "web.0")["State"]["Pid"] == info["State"]["Pid"]

    # --- an outage of the control plane: nothing stops; the node reconciles from its catalog ---
    plane.set_down(True)
    time.sleep(3)
    assert container(node, "web.0")["State"]["Running"]
    node.cli("rm", "-f", "web.0")
    t2 = time.monotonic()
    recreated = wait_for(
        lambda: (c := container(node, "web.0")) and c["State"]["Running"] and c, 60, "web.0 made again from the catalog"
    )
    assert recreated["Id"] != web["container_id"]
    node.stop()  # and a restart during the outage
    node.start()
    time.sleep(2)
    assert container(node, "web.0")["Id"] == recreated["Id"]
    assert container(node, "web.0")["State"]["Running"]
    connects = plane.channel_connects
    plane.set_down(False)
    wait_for(lambda: plane.channel_connects > connects, 20, "the channel to reconnect")
    back = plane.wait_state("web.0", "running", t2)
    assert back["container_id"] == recreated["Id"]

    # --- a smaller set removes what is no longer assigned, only that ---
    node.cli("run", "-d", "--name", "users-own", image, "sleep", "100")
    t3 = time.monotonic()
    plane.assign([replica("web.0", image, ["sh", "-c", "echo hello; while true; do echo tick; sleep 0.3; done"],
                          generation=2, env=["A=1"])])
    wait_for(lambda: fleet_containers(node) == ["web.0"], 30, f"only web.0 left (have {fleet_containers(node)})")
    same = plane.wait_state("web.0", "running", t3)
    assert same["generation"] == 2 and same["container_id"] == recreated["Id"], same
    # A changed spec replaces the container; one whose image cannot be
    # pulled leaves the running one alone and is reported failed.
    t4 = time.monotonic()
    plane.assign([replica("web.0", image, ["sh", "-c", "echo v3; sleep 600"], generation=3, env=["A=2"])])
    v3 = plane.wait_state("web.0", "running", t4)
    assert v3["generation"] == 3 and v3["container_id"] != recreated["Id"], v3
    assert "A=2" in container(node, "web.0")["Config"]["Env"]
    assert fleet_containers(node) == ["web.0"]
    t5 = time.monotonic()
    plane.assign([replica("web.0", f"{registry.host}/private/busybox:latest", ["sleep", "600"], generation=4)])
    failed = plane.wait_state("web.0", "failed", t5)
    assert failed["generation"] == 4 and "denied" in failed["reason"], failed
    kept = container(node, "web.0")
    assert kept["Id"] == v3["container_id"] and kept["State"]["Running"]

    plane.assign([])
    wait_for(lambda: fleet_containers(node) == [], 30, "every replica removed")
    assert container(node, "users-own")["State"]["Running"]  # not the fleet's: untouched

    # --- another server named on a later start is refused ---
    node.stop()
    other = node.run_once("--join", "http://127.0.0.1:1")
    assert other.returncode != 0 and "already joined" in other.stderr, output(other)
    node.extra = []
    node.start()  # for the cleanup: no --join needed once joined


def test_join_over_https_trusts_the_ca_placed_in_certs_d(registry, node, tmp_path):
    ca = make_ca(tmp_path, "fleet-ca")
    cert, key = make_cert(tmp_path, ca, "fleet", "127.0.0.1")
    with FakeControlPlane(registry.host, registry.users[f"node.{NODE}"], tls=(cert, key)) as plane:
        untrusted = node.run_once("--join", plane.url, "--token", TOKEN, "--node-name", NODE)
        assert untrusted.returncode != 0, output(untrusted)
        # (rustls' verifier logs its own line before ours.)
        last = untrusted.stderr.strip().splitlines()[-1]
        assert last.startswith("wharf-runner daemon: joining https://"), output(untrusted)
        assert "not trusted" in last and "certs.d" in last, output(untrusted)
        assert not (node.root / "node.json").exists() and plane.joins == []

        # The runner's own certs.d, as for registries: trusted for this host:port only.
        ca_dir = node.root / "certs.d" / f"127.0.0.1:{plane.port}"
        ca_dir.mkdir(parents=True)
        shutil.copy(ca, ca_dir / "ca.crt")
        node.extra = ["--join", plane.url, "--token", TOKEN, "--node-name", NODE]
        node.start()
        assert [j["name"] for j in plane.joins] == [NODE]
        t0 = time.monotonic()
        plane.assign([replica("tls.0", f"{registry.host}/fleet/busybox:latest", ["sleep", "600"])])
        running = plane.wait_state("tls.0", "running", t0)
        assert container(node, "tls.0")["Id"] == running["container_id"]
        wait_for(lambda: plane.heartbeats, 10, "a heartbeat over https")
        plane.assign([])
        wait_for(lambda: fleet_containers(node) == [], 30, "the replica removed")
