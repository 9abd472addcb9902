"""wharf-runner's bridge network (`--network bridge`, the default): each
container's address on the daemon's own bridge (every test daemon has its own
bridge and /24, see conftest._make_daemon), containers reaching each other,
published ports (`-p`, `-P`, `port`, ps PORTS) through the daemon's proxies,
port conflicts, the address management, teardown and daemon restarts; a
bridge subnet that collides with the host's addresses or routes, and an
unknown runtime, each refused with one line and nothing left."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from runner_support import busybox_image, output, unique_bridge, wait_for
from support import free_port

BOTH_RUNTIMES = pytest.mark.parametrize("runner", ["wharf", "runc"], indirect=True)
HTTPD = ["sh", "-c", "echo hello from $(hostname) > /tmp/index.html && exec httpd -f -p 80 -h /tmp"]


def detached(runner, *args) -> str:
    """`run -d ARGS...`; the id (tracked for the leftover checks)."""
    proc = runner.cli("run", "-d", *args, check=False)
    assert proc.returncode == 0, output(proc)
    return runner.track(proc.stdout.strip())


def inspect(runner, name: str) -> dict:
    return json.loads(runner.cli("inspect", name).stdout)[0]


def fetch(port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> str:
    """GET /index.html through a published port, retrying while httpd starts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/index.html", timeout=3) as resp:
                return resp.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def netns_files(runner) -> list[str]:
    d = runner.daemon.root / "netns"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def veth_exists(cid: str) -> bool:
    return Path(f"/sys/class/net/wr{cid[:11]}").exists()


def subnet(runner) -> ipaddress.IPv4Network:
    return ipaddress.ip_network(runner.daemon.bridge_subnet)


@BOTH_RUNTIMES
def test_container_gets_an_address_on_the_bridge(runner):
    cid = detached(runner, "--name", "addr-test", runner.image, "sh", "-c",
                   "ip -4 -o addr show eth0; ip route; cat /etc/hosts; sleep 300")
    info = inspect(runner, cid)
    net = info["NetworkSettings"]
    ip = ipaddress.ip_address(net["IPAddress"])
    assert ip in subnet(runner), net
    assert net["Gateway"] == str(next(subnet(runner).hosts())), net
    assert net["IPPrefixLen"] == 24
    assert net["MacAddress"] == "02:42:" + ":".join(f"{b:02x}" for b in ip.packed), net
    assert net["Networks"]["bridge"]["IPAddress"] == str(ip)
    assert info["HostConfig"]["NetworkMode"] == "bridge"
    logs = wait_for(lambda: (lambda out: out if "localhost" in out else None)(runner.cli("logs", cid).stdout),
                    10, "the container's report")
    assert f"inet {ip}/24" in logs, logs
    assert f"default via {net['Gateway']} dev eth0" in logs, logs
    assert f"{ip}\t{cid[:12]}" in logs, logs
    # The host end is on the daemon's bridge.
    master = Path(f"/sys/class/net/wr{cid[:11]}/master").resolve().name
    assert master == runner.daemon.bridge
    assert cid in netns_files(runner)


@BOTH_RUNTIMES
def test_two_containers_reach_each_other(runner):
    server = detached(runner, runner.image, "sh", "-c", "sleep 300 | nc -l -p 7000")
    ip = inspect(runner, server)["NetworkSettings"]["IPAddress"]
    ping = runner.cli("run", "--rm", runner.image, "sh", "-c", f"ping -c 1 -W 5 {ip}", check=False)
    assert ping.returncode == 0 and "1 packets received" in ping.stdout, output(ping)
    # nc -l may not listen yet: retry the client until it connects. The
    # server's stdin stays open (busybox nc closes the connection at its
    # stdin's EOF, sometimes before the client wrote), and -w lets the
    # client go once it sent.
    send = f"for i in $(seq 50); do echo ping-over-bridge | nc -w 2 {ip} 7000 && exit 0; sleep 0.1; done; exit 1"
    proc = runner.cli("run", "--rm", runner.image, "sh", "-c", send, check=False)
    assert proc.returncode == 0, output(proc)
    wait_for(lambda: "ping-over-bridge" in runner.cli("logs", server).stdout, 10, "the message at the server")


@BOTH_RUNTIMES
def test_published_port_reaches_the_container(runner):
    port = free_port()
    cid = detached(runner, "--name", "web-pub", "-p", f"{port}:80", runner.image, *HTTPD)
    assert fetch(port) == f"hello from {cid[:12]}\n"
    proc = runner.cli("port", "web-pub")
    assert proc.stdout == f"80/tcp -> 0.0.0.0:{port}\n", output(proc)
    assert runner.cli("port", "web-pub", "80/tcp").stdout == f"0.0.0.0:{port}\n"
    missing = runner.cli("port", "web-pub", "81", check=False)
    assert missing.returncode == 1 and "No public port '81/tcp' published for web-pub" in missing.stderr
    ps = runner.cli("ps").stdout
    assert f"0.0.0.0:{port}->80/tcp" in ps, ps
    ports = inspect(runner, cid)["NetworkSettings"]["Ports"]
    assert ports == {"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(port)}]}, ports
    assert inspect(runner, cid)["HostConfig"]["PortBindings"] == {"80/tcp": [{"HostIp": "", "HostPort": str(port)}]}
    # IP::CONTAINERPORT: a random port on that address only.
    cid2 = detached(runner, "-p", "127.0.0.1::80", runner.image, *HTTPD)
    line = runner.cli("port", cid2).stdout.strip()
    assert line.startswith("80/tcp -> 127.0.0.1:"), line
    random_port = int(line.rsplit(":", 1)[1])
    assert fetch(random_port) == f"hello from {cid2[:12]}\n"
    # Stopped: the proxy is closed and the veth gone.
    runner.cli("stop", "-t", "1", cid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not veth_exists(cid)
    assert runner.cli("port", cid).stdout == ""


def test_publish_all_publishes_the_exposed_ports(runner):
    repo = "e2e/exposing"
    runner.push(repo, busybox_image(exposed_ports=["80/tcp", "8081/tcp"]))
    runner.cli("pull", repo, timeout=120)
    cid = detached(runner, "-P", repo, *HTTPD)
    lines = runner.cli("port", cid).stdout.splitlines()
    assert [line.split(" -> ")[0] for line in lines] == ["80/tcp", "8081/tcp"], lines
    host_port = int(lines[0].rsplit(":", 1)[1])
    assert fetch(host_port) == f"hello from {cid[:12]}\n"
    ports = inspect(runner, cid)["NetworkSettings"]["Ports"]
    assert set(ports) == {"80/tcp", "8081/tcp"}, ports
    # Exposed but not published without -P: shown with no binding.
    cid2 = detached(runner, repo, "sleep", "300")
    assert inspect(runner, cid2)["NetworkSettings"]["Ports"] == {"80/tcp": None, "8081/tcp": None}
    assert runner.cli("port", cid2).stdout == ""


@BOTH_RUNTIMES
def test_a_port_in_use_fails_the_start_and_leaves_nothing(runner):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = runner.cli("run", "-d", "--name", "conflict", "-p", f"{port}:80", runner.image, "sleep", "300",
                          check=False)
        assert proc.returncode == 125, output(proc)
        assert f"Bind for 0.0.0.0:{port} failed: port is already allocated" in proc.stderr, output(proc)
        cid = runner.track(runner.cli("inspect", "-f", "{{.Id}}", "conflict").stdout.strip())
        assert runner.fmt("conflict", "{{.State.Status}}") == "created"
        assert netns_files(runner) == [] and not veth_exists(cid)
        # A second publisher of the same port in one run fails the same way.
    free = free_port()
    proc = runner.cli("run", "-d", "-p", f"{free}:80", "-p", f"{free}:81", runner.image, "sleep", "300", check=False)
    assert proc.returncode == 125 and "port is already allocated" in proc.stderr, output(proc)
    assert netns_files(runner) == []
    # Nothing of the failed ones listens: the port is free again.
    with socket.socket() as again:
        again.bind(("0.0.0.0", free))


def test_address_is_freed_at_rm_and_given_again(runner):
    a = detached(runner, runner.image, "sleep", "300")
    b = detached(runner, runner.image, "sleep", "300")
    ip_a = inspect(runner, a)["NetworkSettings"]["IPAddress"]
    ip_b = inspect(runner, b)["NetworkSettings"]["IPAddress"]
    assert ip_a != ip_b
    # Stopped, a keeps its address: a new container does not get it.
    runner.cli("stop", "-t", "0", a)
    c = detached(runner, runner.image, "sleep", "300")
    ip_c = inspect(runner, c)["NetworkSettings"]["IPAddress"]
    assert ip_c not in (ip_a, ip_b)
    runner.cli("start", a)
    assert inspect(runner, a)["NetworkSettings"]["IPAddress"] == ip_a
    runner.cli("rm", "-f", a)
    d = detached(runner, runner.image, "sleep", "300")
    assert inspect(runner, d)["NetworkSettings"]["IPAddress"] == ip_a


@BOTH_RUNTIMES
def test_no_veth_or_namespace_left_after_rm_and_auto_remove(runner):
    proc = runner.cli("run", "--rm", runner.image, "sh", "-c", "ip -o link show eth0 && ping -c1 -W5 "
                      + str(next(subnet(runner).hosts())), check=False)
    assert proc.returncode == 0, output(proc)
    cid = detached(runner, runner.image, "sleep", "300")
    assert veth_exists(cid) and cid in netns_files(runner)
    runner.cli("rm", "-f", cid)
    assert not veth_exists(cid)
    wait_for(lambda: netns_files(runner) == [], 10, "the netns files to go")
    links = [p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith(("wr", "wp"))]
    mine = [name for name in links if (Path("/sys/class/net") / name / "master").resolve().name == runner.daemon.bridge]
    assert mine == [], mine


def test_none_and_host_still_have_no_bridge_address(runner):
    cid = detached(runner, "--network", "none", runner.image, "sleep", "300")
    info = inspect(runner, cid)
    assert info["HostConfig"]["NetworkMode"] == "none"
    assert info["NetworkSettings"]["IPAddress"] == ""
    assert not veth_exists(cid) and netns_files(runner) == []


def test_daemon_restart_keeps_published_ports(runner_factory):
    env = runner_factory()
    env.cli("pull", env.image, timeout=120)
    port = free_port()
    cid = env.track(env.cli("run", "-d", "-p", f"{port}:80", env.image, *HTTPD).stdout.strip())
    assert fetch(port) == f"hello from {cid[:12]}\n"
    env.daemon.restart()
    assert fetch(port) == f"hello from {cid[:12]}\n"
    assert env.cli("port", cid).stdout == f"80/tcp -> 0.0.0.0:{port}\n"
    env.cli("rm", "-f", cid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def start_failing_daemon(runner, tmp_path: Path, bridge: str, subnet: str) -> subprocess.CompletedProcess:
    """A daemon of the test's own that is expected not to start."""
    sock_dir = Path(tempfile.mkdtemp(prefix="wr-", dir="/tmp"))
    try:
        proc = subprocess.run(
            [str(runner.daemon.binary), "daemon", "--root", str(tmp_path / "root"),
             "--socket", str(sock_dir / "runner.sock"), "--bridge", bridge, "--bridge-subnet", subnet],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False,
            env={**os.environ, "NO_COLOR": "1", "RUST_LOG": "info"},
        )
        assert not (sock_dir / "runner.sock").exists(), "the refused daemon left its socket"
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)
    return proc


def test_a_bridge_subnet_that_collides_with_the_host_is_refused(runner, tmp_path):
    # A bridge of the test's own with an address, and a route through it.
    other, net = unique_bridge()
    net = ipaddress.ip_network(net)
    gateway = next(net.hosts())
    routed = ipaddress.ip_network(f"10.92.{net.network_address.packed[2]}.0/24")
    assert str(routed) not in subprocess.run(["ip", "-4", "route"], capture_output=True, text=True, check=True).stdout
    subprocess.run(["ip", "link", "add", other, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{gateway}/{net.prefixlen}", "dev", other], check=True)
        subprocess.run(["ip", "link", "set", other, "up"], check=True)
        subprocess.run(["ip", "route", "add", str(routed), "dev", other], check=True)
        bridge, _ = unique_bridge()
        for subnet, conflict in [
            (str(net), f"the address {gateway}/{net.prefixlen} of {other}"),
            # Other test daemons' bridges are in the /16 too: any of them.
            (str(net.supernet(new_prefix=16)), "the address 10.91."),
            (str(next(routed.subnets(new_prefix=26))), f"the route to {routed} on {other}"),
        ]:
            proc = start_failing_daemon(runner, tmp_path, bridge, subnet)
            assert proc.returncode == 1, (subnet, proc.stderr)
            lines = proc.stderr.splitlines()
            assert len(lines) == 1 and lines[0].startswith(
                f"wharf-runner daemon: the bridge subnet {subnet} (--bridge-subnet) conflicts with {conflict}"
            ), proc.stderr
            # Nothing made: no state dir, no bridge.
            assert not (tmp_path / "root").exists()
            assert not Path(f"/sys/class/net/{bridge}").exists()
        # The running test daemon's bridge is in use too.
        proc = start_failing_daemon(runner, tmp_path, bridge, runner.daemon.bridge_subnet)
        assert proc.returncode == 1 and f"of {runner.daemon.bridge}\n" in proc.stderr, proc.stderr
        assert not Path(f"/sys/class/net/{bridge}").exists()
    finally:
        subprocess.run(["ip", "link", "del", other], capture_output=True, check=False)


@BOTH_RUNTIMES
def test_an_unknown_runtime_is_one_line_and_leaves_nothing(runner):
    before = runner.cli("ps", "-a", "-q", "--no-trunc").stdout
    dirs = sorted(p.name for p in (runner.daemon.root / "containers").iterdir())
    for command in (["run", "--rm"], ["run", "-d"], ["create"]):
        proc = runner.cli(*command, "--runtime", "nope", runner.image, "true", check=False)
        assert proc.returncode == 125, output(proc)
        assert proc.stderr.splitlines() == [
            "Error response from daemon: unknown or invalid runtime name: nope"
        ], output(proc)
        assert proc.stdout == "", output(proc)
    assert runner.cli("ps", "-a", "-q", "--no-trunc").stdout == before
    assert sorted(p.name for p in (runner.daemon.root / "containers").iterdir()) == dirs
