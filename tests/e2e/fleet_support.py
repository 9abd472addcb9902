"""A small LAN on this machine for the fleet tests (issue #7).

`Lan` makes network namespaces joined by one Linux bridge through veth
pairs, each namespace with one address on a 10.213.X.0/24 of its own; the
root namespace has no address on it, so everything the server and the
runners say to each other crosses the bridge. Processes are started in a
namespace with `nsenter --net` only (not `ip netns exec`, which remounts
/sys and would hide the cgroup hierarchy from the runner), and Python code
runs there through `Lan.call` (a thread that `setns`es first: a socket
belongs to the namespace of the thread that made it).
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import requests

from runner_support import RunnerDaemon, busybox_image, free_unix_socket_path, runner_binary
from support import AUTH_ENV, RegistryApi, WharfServer, run, server_binary

NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def setns_net(fd: int) -> None:
    """setns(2) of the calling thread into a network namespace (os.setns is
    Python 3.12+; Debian 12 has 3.11)."""
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class Lan:
    def __init__(self, members: list[str]):
        self.tag = uuid.uuid4().hex[:5]
        self.bridge = f"wfb{self.tag}"
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
        taken = set(re.findall(r"inet 10\.213\.(\d+)\.", used))
        free = [x for x in range(1, 250) if str(x) not in taken]
        assert free, "no free 10.213.X.0/24 for a test LAN"
        self.octet = free[int(self.tag, 16) % len(free)]
        self.members: dict[str, tuple[str, str]] = {}  # name -> (netns, address)
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        for name in members:
            self.add(name)

    def add(self, name: str) -> str:
        """One more namespace on the bridge; returns its address."""
        index = len(self.members) + 1
        ns = f"wf{self.tag}-{name}"
        veth = f"wfv{self.tag}{index}"
        address = f"10.213.{self.octet}.{index}"
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge, "up")
        _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        self.members[name] = (ns, address)
        return address

    def address(self, name: str) -> str:
        return self.members[name][1]

    def netns(self, name: str) -> str:
        return self.members[name][0]

    def prefix(self, name: str) -> list[str]:
        """The command prefix that runs a program in `name`'s network namespace."""
        return ["nsenter", f"--net={NETNS_DIR / self.netns(name)}", "--"]

    def call(self, name: str, fn, *args, **kwargs):
        """fn(*args, **kwargs) on a thread inside `name`'s network namespace."""
        result: dict = {}

        def body():
            try:
                with open(NETNS_DIR / self.netns(name)) as f:
                    setns_net(f.fileno())
                result["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # re-raised on the caller's thread
                result["error"] = exc

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        thread.join()
        if "error" in result:
            raise result["error"]
        return result.get("value")

    def shape(self, name: str, rate: str | None) -> None:
        """Limits `name`'s outgoing and incoming traffic to `rate` (tc tbf on
        both ends of its link), or lifts the limit (None)."""
        index = list(self.members).index(name) + 1
        for dev, ns in (("eth0", self.netns(name)), (f"wfv{self.tag}{index}", None)):
            prefix = ["-n", ns] if ns else []
            subprocess.run(["tc", *prefix, "qdisc", "del", "dev", dev, "root"], capture_output=True)
            if rate:
                subprocess.run(
                    ["tc", *prefix, "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", "32kbit",
                     "latency", "400ms"],
                    check=True, capture_output=True,
                )

    def disconnect(self, name: str) -> None:
        """Takes `name` off the LAN (its link down), as a pulled cable would."""
        _ip("-n", self.netns(name), "link", "set", "eth0", "down")

    def reconnect(self, name: str) -> None:
        _ip("-n", self.netns(name), "link", "set", "eth0", "up")

    def close(self) -> None:
        for ns, _ in self.members.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


class NsRunnerDaemon(RunnerDaemon):
    """A runner daemon in one of the LAN's namespaces, joining a fleet."""

    def __init__(self, lan: Lan, member: str, *args, join: list[str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lan = lan
        self.member = member
        self.join = list(join or [])

    def command(self) -> list[str]:
        return [*self.lan.prefix(self.member), *super().command(), *self.join]


class NsServer(WharfServer):
    """wharf-server in one of the LAN's namespaces, on its bridge address,
    over TLS with its self-signed CA (`ca` is the CA file clients trust)."""

    def __init__(self, lan: Lan, member: str, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.lan = lan
        self.member = member
        self.prefix = lan.prefix(member)
        self.serve_args = ["--tls-self-signed"]

    @property
    def host(self) -> str:
        return f"{self.lan.address(self.member)}:{self.port}"

    @property
    def url(self) -> str:
        return f"https://{self.host}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.crt"

    def probe(self, url: str) -> requests.Response:
        verify = str(self.ca) if self.ca.is_file() else False
        return self.lan.call(self.member, requests.get, url, timeout=2, verify=verify)

    def api_in(self, member: str, user: str) -> RegistryApi:
        """A registry client whose requests go out from `member`'s namespace."""
        return NsRegistryApi(self.lan, member, self.url, credentials=(user, self.users[user]), verify=str(self.ca))

    def trust(self, runner_root: Path) -> None:
        """Makes a runner's state dir trust this server's CA (certs.d/HOST:PORT/ca.crt)."""
        d = runner_root / "certs.d" / self.host
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.ca, d / "ca.crt")


class NsRegistryApi(RegistryApi):
    def __init__(self, lan: Lan, member: str, base_url: str, credentials=None, verify=True):
        super().__init__(base_url, credentials=credentials)
        self.session.verify = verify
        # Otherwise REQUESTS_CA_BUNDLE from the environment wins over `verify`.
        self.session.trust_env = False
        self.lan = lan
        self.member = member

    def request(self, method: str, path: str, **kwargs) -> requests.Response:
        return self.lan.call(self.member, super().request, method, path, **kwargs)

    def token(self, *args, **kwargs) -> str:
        return self.lan.call(self.member, super().token, *args, **kwargs)


TTL = 3  # seconds without heartbeat before a node is down (the default is 15)


class Fleet:
    """The server, its admin CLI, and the runner nodes of one LAN."""

    def __init__(self, lan: Lan, tmp_path: Path):
        self.lan = lan
        self.tmp = tmp_path
        self.server = NsServer(
            lan, "server", server_binary(), tmp_path / "server", tmp_path / "server.log",
            env={**AUTH_ENV, "WHARF_FLEET_NODE_TTL_SECS": str(TTL)},
        )
        self.server.add_user("admin", admin=True)
        self.server.start()
        self.runners: dict[str, NsRunnerDaemon] = {}

    def admin(self, *args, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """`wharf-server ARGS` in the server's namespace, on its data dir,
        pointed at the running server."""
        cmd = [*self.lan.prefix("server"), *self.server.command(*args[:1]), "--server", self.server.url, *args[1:]]
        return run(cmd, check=check, timeout=timeout, env=self.cli_env())

    def admin_popen(self, *args) -> subprocess.Popen:
        cmd = [*self.lan.prefix("server"), *self.server.command(*args[:1]), "--server", self.server.url, *args[1:]]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.cli_env())

    def cli_env(self) -> dict:
        # The same settings as the server's (auth on, TLS self-signed), as a
        # shared config file would give them.
        env = {**os.environ, **self.server.env, "WHARF_TLS_SELF_SIGNED": "true", "NO_COLOR": "1"}
        env.pop("WHARF_ADMIN_PASSWORD", None)
        return env

    def token(self, *flags: str) -> str:
        out = self.admin("node", "token", "create", *flags).stdout.strip()
        assert out and "\n" not in out, out
        self.server.secrets.append(out)
        return out

    def runner(self, member: str, *join_flags: str) -> NsRunnerDaemon:
        root = self.tmp / f"runner-{member}"
        root.mkdir(parents=True, exist_ok=True)
        self.server.trust(root)
        d = NsRunnerDaemon(
            self.lan, member, runner_binary(), root, Path(free_unix_socket_path()), self.tmp / f"{member}.log",
            self.server.host, join=["--join", self.server.url, *join_flags],
        )
        self.runners[member] = d
        return d

    def push_busybox(self, repo: str, tag: str = "1") -> str:
        api = self.server.api_in("server", "admin").authorize(f"repository:{repo}:pull,push")
        return busybox_image().push(api, repo, tag)

    def nodes(self) -> dict[str, dict]:
        out = self.admin("node", "ls", "--json").stdout
        return {n["name"]: n for n in json.loads(out)}

    def deployment(self, name: str) -> dict:
        return json.loads(self.admin("deployments", "inspect", name).stdout)

    def running(self, name: str) -> dict[str, str]:
        """replica id -> node, for the replicas the server has seen running."""
        return {r["id"]: r["node"] for r in self.deployment(name)["replicas"] if r["state"] == "running"}

    @staticmethod
    def close_runner(d: NsRunnerDaemon) -> None:
        """Removes a runner's containers and stops it (started again first if it was down)."""
        if not d.running:
            try:
                d.start()
            except AssertionError:
                return
        ids = d.cli("ps", "-aq", check=False).stdout.split()
        if ids:
            d.cli("rm", "-f", *ids, check=False, timeout=120)
        d.stop()

    def close(self) -> None:
        for d in self.runners.values():
            self.close_runner(d)
        self.server.stop()


def node_json(d: NsRunnerDaemon) -> dict:
    path = d.root / "node.json"
    assert path.stat().st_mode & 0o777 == 0o600, oct(path.stat().st_mode)
    return json.loads(path.read_text())


def containers(d: NsRunnerDaemon) -> dict[str, str]:
    """name -> State.Status of every container on a runner."""
    ids = d.cli("ps", "-aq").stdout.split()
    if not ids:
        return {}
    return {c["Name"].lstrip("/"): c["State"]["Status"] for c in json.loads(d.cli("inspect", *ids).stdout)}
