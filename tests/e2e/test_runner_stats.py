"""`wharf-runner stats`: each container's CPU %, memory usage / limit,
memory %, network and block I/O and pids, read from its cgroup and its
network namespace, in docker's table, units, --format and exit codes; and
the daemon's `GET /containers/{id}/stats` in docker's JSON shape. Under
both runtimes (the built-in one and runc) where the container side matters."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest

from runner_support import ID_RE, api_request, output, wait_for, unique

BOTH_RUNTIMES = pytest.mark.parametrize("runner", ["wharf", "runc"], indirect=True)

HEADER = "CONTAINER ID   NAME      CPU %     MEM USAGE / LIMIT   MEM %     NET I/O   BLOCK I/O   PIDS"
HEADER_WORDS = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS"]

BINARY = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
DECIMAL = {"B": 1, "kB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}


def start(runner, name: str, *flags_and_cmd) -> str:
    """`run -d --name NAME FLAGS IMAGE CMD` ("--" separates flags from the
    command); the id, tracked for the leftover checks."""
    if "--" in flags_and_cmd:
        i = flags_and_cmd.index("--")
        flags, cmd = list(flags_and_cmd[:i]), list(flags_and_cmd[i + 1 :])
    else:
        flags, cmd = [], list(flags_and_cmd)
    proc = runner.cli("run", "-d", "--name", name, *flags, runner.image, *(cmd or ["sleep", "300"]))
    cid = proc.stdout.strip()
    assert ID_RE.match(cid), output(proc)
    return runner.track(cid)


def size(text: str, units: dict[str, int]) -> float:
    """'1.234MiB' / '1.05kB' / '1e+03kB' -> bytes."""
    m = re.fullmatch(r"([0-9.e+-]+)([A-Za-z]+)", text.strip())
    assert m and m.group(2) in units, f"not a size: {text!r}"
    return float(m.group(1)) * units[m.group(2)]


def poll(predicate, timeout: float, what: str, seen: list) -> None:
    """wait_for, naming the readings seen when it times out."""
    try:
        wait_for(predicate, timeout, what, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; readings: {seen}") from None


def one(runner, name: str, template: str) -> str:
    proc = runner.cli("stats", "--no-stream", "--format", template, name, timeout=30)
    return proc.stdout.strip()


@BOTH_RUNTIMES
def test_busy_container_shows_cpu_and_its_memory_limit(runner):
    name = unique("busy")
    start(runner, name, "-m", "64m", "--", "sh", "-c", "while :; do :; done")
    # A single --no-stream reading covers half a second: retry a little in
    # case the loop was just scheduled out (the host has two cpus and other
    # work), but one good reading must come.
    seen = []

    def busy() -> bool:
        line = one(runner, name, "{{.Name}} {{.CPUPerc}} {{.MemUsage}} {{.MemPerc}}")
        seen.append(line)
        got_name, cpu, usage, _slash, limit, mem_perc = line.split(" ")
        assert got_name == name and limit == "64MiB", line
        assert re.fullmatch(r"\d+\.\d\d%", cpu) and re.fullmatch(r"\d+\.\d\d%", mem_perc), line
        assert size(usage, BINARY) > 0, line
        return float(cpu[:-1]) > 20

    poll(busy, 20, "CPU % above 20 for a busy loop", seen)


@BOTH_RUNTIMES
def test_memory_usage_counts_what_the_container_allocated(runner):
    name = unique("mem")
    # Not `; sleep 300` last: ash would exec it and the shell's memory go.
    start(runner, name, "--", "sh", "-c", "a=$(head -c 20000000 /dev/zero | tr '\\0' x); sleep 300; echo ${#a}")
    seen = []

    def allocated() -> bool:
        usage = one(runner, name, "{{.MemUsage}}").split(" / ")[0]
        seen.append(usage)
        return size(usage, BINARY) > 20_000_000

    poll(allocated, 30, "memory usage above 20 MB", seen)
    # No -m: the limit shown is the host's memory.
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    limit = one(runner, name, "{{.MemUsage}}").split(" / ")[1]
    assert abs(size(limit, BINARY) - total_kib * 1024) <= total_kib * 1024 * 0.001, limit


@BOTH_RUNTIMES
def test_pids_counts_the_containers_processes(runner):
    name = unique("pids")
    start(runner, name, "--", "sh", "-c", "for i in 1 2 3 4 5; do sleep 300 & done; wait")
    seen = []

    def six() -> bool:
        seen.append(one(runner, name, "{{.PIDs}}"))
        return seen[-1] == "6"

    poll(six, 15, "6 pids (sh and 5 sleeps)", seen)


@BOTH_RUNTIMES
def test_net_io_grows_when_the_container_receives(runner):
    name = unique("rx")
    # nc -l's stdin stays open: at its end busybox nc would hang up.
    cid = start(runner, name, "--", "sh", "-c", "sleep 300 | nc -l -p 7000 > /dev/null")
    ip = runner.daemon.inspect(cid)["NetworkSettings"]["IPAddress"]
    assert ip, "the container has no address"

    def net() -> tuple[float, float]:
        rx, tx = one(runner, name, "{{.NetIO}}").split(" / ")
        return size(rx, DECIMAL), size(tx, DECIMAL)

    rx0, tx0 = net()
    # nc -l may not listen yet: retry the client until it connects.
    send = (f"for i in $(seq 50); do head -c 300000 /dev/zero | nc -w 2 {ip} 7000 && exit 0; sleep 0.1; done;"
            " exit 1")
    proc = runner.cli("run", "--rm", runner.image, "sh", "-c", send, check=False, timeout=60)
    assert proc.returncode == 0, output(proc)
    rx1, tx1 = net()
    # The container's receive side (no swap with the host end of its veth).
    assert rx1 - rx0 >= 300_000, (rx0, rx1)
    assert 0 < tx1 - tx0 < rx1 - rx0, (tx0, tx1)


def test_no_stream_lists_running_containers_and_all_with_a(runner):
    a, b, stopped = unique("a"), unique("b"), unique("stopped")
    ida = start(runner, a)
    idb = start(runner, b)
    created = runner.cli("create", "--name", stopped, runner.image, "true").stdout.strip()
    runner.track(created)
    proc = runner.cli("stats", "--no-stream", timeout=30)
    lines = proc.stdout.splitlines()
    assert lines[0] == HEADER or re.split(r"\s{3,}", lines[0]) == HEADER_WORDS, output(proc)
    rows = [re.split(r"\s{3,}", line) for line in lines[1:]]
    assert sorted(r[0] for r in rows) == sorted([ida[:12], idb[:12]]), output(proc)
    for row in rows:
        assert len(row) == 8, row
        assert re.fullmatch(r"\d+\.\d\d%", row[2]), row
        assert re.fullmatch(r"\S+ / \S+", row[3]) and re.fullmatch(r"\S+ / \S+", row[5]), row
        assert row[7] == "1", row
    assert {r[1] for r in rows} == {a, b}

    # -a adds the stopped one, with zeros; --no-trunc shows full ids.
    proc = runner.cli("stats", "--no-stream", "-a", "--no-trunc", timeout=30)
    rows = {re.split(r"\s{3,}", line)[1]: re.split(r"\s{3,}", line) for line in proc.stdout.splitlines()[1:]}
    assert set(rows) == {a, b, stopped}, output(proc)
    assert rows[stopped] == [created, stopped, "0.00%", "0B / 0B", "0.00%", "0B / 0B", "0B / 0B", "0"]
    assert rows[a][0] == ida

    # Named containers come in the order given, a stopped one with zeros.
    proc = runner.cli("stats", "--no-stream", "--format", "{{.Container}}:{{.Name}}:{{.PIDs}}", b, stopped, a)
    assert proc.stdout == f"{b}:{b}:1\n{stopped}:{stopped}:0\n{a}:{a}:1\n", output(proc)


def test_format_table_json_and_errors(runner):
    name = unique("fmt")
    cid = start(runner, name)
    proc = runner.cli("stats", "--no-stream", "--format", "{{.Name}} {{.CPUPerc}} {{.MemUsage}}", name)
    assert re.fullmatch(rf"{name} \d+\.\d\d% \S+ / \S+\n", proc.stdout), output(proc)
    proc = runner.cli("stats", "--no-stream", "--format", "table {{.Container}}\\t{{.ID}}\\t{{.PIDs}}", cid[:8])
    assert proc.stdout.splitlines() == [
        "CONTAINER   CONTAINER ID   PIDS",
        f"{cid[:8]}    {cid[:12]}   1",
    ], output(proc)
    proc = runner.cli("stats", "--no-stream", "--format", "json", name)
    obj = json.loads(proc.stdout)
    assert set(obj) == {"BlockIO", "CPUPerc", "Container", "ID", "MemPerc", "MemUsage", "Name", "NetIO", "PIDs"}
    assert obj["Name"] == name and obj["ID"] == cid[:12] and obj["PIDs"] == "1"

    # A missing container: docker's message, exit 1, nothing on stdout;
    # with or without --no-stream.
    for args in (["--no-stream", name, "nope-x"], ["nope-x"]):
        proc = runner.cli("stats", *args, check=False, timeout=30)
        assert proc.returncode == 1, output(proc)
        assert proc.stderr.strip() == "Error response from daemon: No such container: nope-x", output(proc)
        assert proc.stdout == "", output(proc)
    proc = runner.cli("stats", "--no-stream", "--format", "{{.Name", name, check=False)
    assert proc.returncode != 0 and "template" in proc.stderr, output(proc)


@BOTH_RUNTIMES
def test_streaming_redraws_every_second_until_interrupted(runner):
    name = unique("live")
    start(runner, name, "--", "sh", "-c", "while :; do :; done")
    proc = runner.daemon.popen("stats", name)
    try:
        time.sleep(3.6)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert "\x1b[" not in out, "no screen clearing when stdout is not a terminal"
    blocks = [line for line in out.splitlines() if line.startswith("CONTAINER ID")]
    assert 2 <= len(blocks) <= 5, out + err
    rows = [re.split(r"\s{3,}", line) for line in out.splitlines() if name in line]
    assert len(rows) == len(blocks), out
    # Once the stream has two readings the busy loop shows.
    assert any(float(r[2][:-1]) > 20 for r in rows), out


def test_stats_api_is_docker_shaped(runner):
    name = unique("api")
    cid = start(runner, name, "-m", "32m", "--", "sh", "-c", "sleep 300 & sleep 300 & wait")
    status, body = api_request(runner.daemon.socket, "GET", f"/containers/{name}/stats?stream=false", timeout=10)
    assert status == 200, body
    v = json.loads(body)
    assert v["id"] == cid and v["name"] == f"/{name}"
    assert v["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    assert v["cpu_stats"]["system_cpu_usage"] > v["precpu_stats"]["system_cpu_usage"] > 0
    assert v["cpu_stats"]["online_cpus"] >= 1
    assert v["memory_stats"]["limit"] == 32 * 1024 * 1024
    assert v["memory_stats"]["usage"] > 0
    assert isinstance(v["memory_stats"]["stats"], dict) and v["memory_stats"]["stats"]
    assert v["pids_stats"]["current"] == 3
    assert "eth0" in v["networks"] and "lo" not in v["networks"]
    assert isinstance(v["blkio_stats"]["io_service_bytes_recursive"], list)
    assert v["read"] != v["preread"]
    # one-shot: no precpu.
    status, body = api_request(runner.daemon.socket, "GET", f"/containers/{cid}/stats?stream=false&one-shot=true")
    assert status == 200 and "system_cpu_usage" not in json.loads(body)["precpu_stats"], body
    status, body = api_request(runner.daemon.socket, "GET", "/containers/nope-x/stats?stream=false")
    assert status == 404 and json.loads(body)["message"] == "No such container: nope-x"
    # --network host: no networks, as docker shows none there.
    host = unique("host")
    start(runner, host, "--network", "host", "--")
    status, body = api_request(runner.daemon.socket, "GET", f"/containers/{host}/stats?stream=false", timeout=10)
    assert status == 200 and "networks" not in json.loads(body), body
    assert one(runner, host, "{{.NetIO}}") == "0B / 0B"


def test_streaming_all_running_follows_containers_that_start_and_stop(runner):
    first, second = unique("first"), unique("second")
    start(runner, first)
    proc = runner.daemon.popen("stats", "--format", "{{.Name}} {{.PIDs}}")
    try:
        time.sleep(2.0)
        start(runner, second)
        time.sleep(2.5)
        runner.cli("stop", "-t", "0", first)
        time.sleep(2.5)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    lines = out.splitlines()
    assert lines and lines[0] == f"{first} 1", out + err
    assert f"{second} 1" in lines, out + err
    # Once stopped, `first` is no longer listed: the last lines are `second`'s.
    assert lines[-1] == f"{second} 1" and lines[-2] == f"{second} 1", out + err


def test_streaming_on_a_terminal_clears_the_screen_before_each_table(runner):
    name = unique("tty")
    start(runner, name)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(runner.daemon.binary), "stats", name],
        stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE, env=runner.daemon.cli_env(),
    )
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                out += os.read(master, 65536)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        os.close(master)
    text = out.decode(errors="replace")
    assert text.count("\x1b[2J\x1b[H") >= 2, repr(text)
    assert text.count("\x1b[2J\x1b[H") == text.count("CONTAINER ID"), repr(text)
