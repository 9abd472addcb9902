"""wharf-runner end to end: a real `wharf-runner daemon` pulling from a real
wharf-server, driven through its docker-like CLI as root.

Most tests share the module's daemon and server (`runner` fixture; every
container is removed after each test and anything left behind fails it);
tests that stop the daemon or log in get their own (`runner_factory`).
Images are pushed straight through the registry API (runner_support.Image):
the busybox image, a 100-layer one, and malicious layers.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import stat
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pytest

from runner_support import (
    DOCKER_DEFAULT_CAPS,
    EVIL_KINDS,
    ID_RE,
    MANY_LAYERS,
    NOT_RUNNING_HINT,
    RunnerDaemon,
    EvilTargets,
    busybox_image,
    busybox_layer,
    cgroup_file,
    cpu_quota,
    cpu_usage_ns,
    evil_layer,
    free_unix_socket_path,
    layer_names,
    leftovers,
    many_layers_image,
    file_entry,
    make_layer,
    marker_layer,
    mount_points,
    output,
    read_keyed,
    runner_binary,
    unique_bridge,
    wait_for,
    unique,
)
from conftest import RunnerEnv
from support import assert_image_in_registry, free_port

TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
CREATED_RE = re.compile(r"^(Less than a second|\d+ seconds?|About a minute|\d+ minutes?) ago$")
SIZE_RE = re.compile(r"^\d+(\.\d+)?(B|kB|MB|GB)$")
PS_HEADER = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
IMAGES_HEADER = ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
MEMORY_HOG = "a=xxxxxxxxxx; while :; do a=$a$a; done"


# The isolation tests run under the built-in runtime and under runc, with the
# same expectations: the bundle is the boundary, and both must honour it.
BOTH_RUNTIMES = pytest.mark.parametrize("runner", ["wharf", "runc"], indirect=True)


def run_rm(runner, *args, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """`wharf-runner run --rm IMAGE ARGS...` (flags before IMAGE go in `args`
    up to a "--" marker: run_rm(r, "--hostname", "x", "--", "hostname"))."""
    if "--" in args:
        i = args.index("--")
        flags, cmd = list(args[:i]), list(args[i + 1 :])
    else:
        flags, cmd = [], list(args)
    return runner.cli("run", "--rm", *flags, runner.image, *cmd, check=check, timeout=timeout)


def run_detached(runner, *flags_and_cmd, image: str | None = None) -> str:
    """`run -d FLAGS IMAGE CMD` with the same "--" split as run_rm; returns the id."""
    if "--" in flags_and_cmd:
        i = flags_and_cmd.index("--")
        flags, cmd = list(flags_and_cmd[:i]), list(flags_and_cmd[i + 1 :])
    else:
        flags, cmd = [], list(flags_and_cmd)
    proc = runner.cli("run", "-d", *flags, image or runner.image, *cmd)
    cid = proc.stdout.strip()
    assert ID_RE.match(cid), f"run -d did not print a 64-hex id\n{output(proc)}"
    return runner.track(cid)


def wait_exit(runner, cid: str, timeout: float = 30) -> int:
    proc = runner.cli("wait", cid, timeout=timeout)
    return int(proc.stdout.strip())


def table(text: str, header: list[str]) -> list[dict]:
    """Parses docker's tabwriter output by the header's column offsets."""
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines, "empty table"
    head = lines[0]
    starts = []
    for name in header:
        pos = head.find(name, starts[-1] + 1 if starts else 0)
        assert pos >= 0, f"no {name!r} column in header {head!r}"
        starts.append(pos)
    assert re.split(r" {2,}", head.strip()) == header, f"header is {head!r}"
    rows = []
    for line in lines[1:]:
        cells = [line[s:e].strip() for s, e in zip(starts, starts[1:] + [None])]
        rows.append(dict(zip(header, cells)))
    return rows


def ps_row(runner, cid: str, *flags) -> dict | None:
    rows = table(runner.cli("ps", *flags).stdout, PS_HEADER)
    matches = [row for row in rows if row["CONTAINER ID"] == cid[:12]]
    assert len(matches) <= 1, rows
    return matches[0] if matches else None


def parse_time(value: str) -> datetime:
    assert TIMESTAMP_RE.match(value), f"not an RFC 3339 timestamp: {value!r}"
    main, _, rest = value.partition(".")
    zone = "Z" if value.endswith("Z") else value[-6:]
    fraction = rest[: -len(zone)] if rest else ""
    text = main + ("." + fraction[:6].ljust(6, "0") if fraction else "") + ("+00:00" if zone == "Z" else zone)
    return datetime.fromisoformat(text)


def net_interfaces(text: str) -> list[str]:
    """Interface names of a /proc/net/dev."""
    return sorted(line.split(":", 1)[0].strip() for line in text.splitlines()[2:] if ":" in line)


def stderr_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def error_lines(proc) -> list[str]:
    """stderr without what docker prints around a failed pull or run: the
    "Unable to find image" notice, pull progress and the "See '... --help'" hint."""
    return [
        line
        for line in stderr_lines(proc)
        if not line.startswith(("Unable to find image", "See 'wharf-runner")) and ": Pulling from " not in line
    ]


# =========================================================================== isolation


@BOTH_RUNTIMES
def test_command_is_pid1_and_sees_no_host_process(runner):
    proc = run_rm(runner, "cat", "/proc/1/cmdline")
    assert proc.stdout == "cat\0/proc/1/cmdline\0", output(proc)
    pids = [name for name in run_rm(runner, "ls", "/proc").stdout.split() if name.isdigit()]
    assert pids == ["1"], f"the container sees other processes: {pids}"


@BOTH_RUNTIMES
def test_hostname_is_the_short_id_or_the_flag(runner):
    cid = run_detached(runner, "hostname")
    assert wait_exit(runner, cid) == 0
    assert runner.cli("logs", cid).stdout == cid[:12] + "\n"
    assert run_rm(runner, "--hostname", "x", "--", "hostname").stdout == "x\n"
    assert run_rm(runner, "-h", "other-name", "--", "hostname").stdout == "other-name\n"
    assert os.uname().nodename not in ("x", "other-name"), "the host's hostname changed"


@BOTH_RUNTIMES
def test_root_filesystem_is_the_image(runner):
    marker = Path("/") / unique("wharf-e2e-host-marker")
    marker.write_text("host\n")
    try:
        proc = run_rm(runner, "sh", "-c", f"ls -a /; test -e {marker} && echo VISIBLE || echo absent")
        assert proc.stdout.splitlines()[-1] == "absent", output(proc)
        assert marker.name not in proc.stdout
        passwd = run_rm(runner, "cat", "/etc/passwd").stdout
        assert passwd.startswith("root:x:0:0:root:/root:/bin/sh\nnobody:"), passwd
        assert passwd != Path("/etc/passwd").read_text()
    finally:
        marker.unlink()


# Mount points a container has of its own (docker's set), not the host's.
CONTAINER_MOUNT_PREFIXES = ("/proc", "/sys", "/dev")
CONTAINER_MOUNTS = {"/", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf"}


@BOTH_RUNTIMES
def test_no_host_mount_is_visible(runner):
    container = [line.split()[1] for line in run_rm(runner, "cat", "/proc/mounts").stdout.splitlines()]
    assert "/" in container
    host_only = {
        m
        for m in mount_points()
        if m not in CONTAINER_MOUNTS and not any(m == p or m.startswith(p + "/") for p in CONTAINER_MOUNT_PREFIXES)
    }
    host_only |= {str(runner.daemon.root), "/work", str(Path(tempfile.gettempdir()))}
    seen = sorted(host_only & set(container))
    assert not seen, f"host mounts visible in the container: {seen}\n{container}"
    unexpected = [
        m
        for m in container
        if m not in CONTAINER_MOUNTS and not any(m == p or m.startswith(p + "/") for p in CONTAINER_MOUNT_PREFIXES)
    ]
    assert unexpected == [], f"mounts outside /proc, /sys, /dev: {unexpected}"


@BOTH_RUNTIMES
def test_proc_sys_is_read_only(runner):
    proc = run_rm(runner, "sh", "-c", "echo wharf-e2e > /proc/sys/kernel/hostname", check=False)
    assert proc.returncode != 0, output(proc)
    assert "Read-only file system" in proc.stderr, output(proc)


@BOTH_RUNTIMES
def test_proc_kcore_is_masked(runner):
    # docker masks these with /dev/null; a kernel without CONFIG_PROC_KCORE
    # (like this machine's) has no /proc/kcore at all, and then the
    # container must not have one either. /proc/timer_list is a masked file
    # with content on every kernel, so the masking itself is always checked.
    script = "for f in /proc/kcore /proc/timer_list /proc/keys; do if [ -e $f ]; then echo $f $(cat $f | wc -c); else echo $f absent; fi; done"
    got = dict(line.split(" ", 1) for line in run_rm(runner, "sh", "-c", script).stdout.splitlines())
    assert Path("/proc/timer_list").exists() and Path("/proc/timer_list").read_text(), "host has no /proc/timer_list"
    assert got["/proc/timer_list"] == "0", got
    assert got["/proc/keys"] in ("0", "absent"), got
    assert got["/proc/kcore"] == ("0" if Path("/proc/kcore").exists() else "absent"), got


@BOTH_RUNTIMES
def test_capabilities_are_dockers_default(runner):
    status = run_rm(runner, "cat", "/proc/self/status").stdout
    caps = dict(re.findall(r"^(Cap\w+):\s*([0-9a-f]+)$", status, re.M))
    assert caps["CapEff"] == DOCKER_DEFAULT_CAPS, status
    assert caps["CapBnd"] == DOCKER_DEFAULT_CAPS, status


@BOTH_RUNTIMES
def test_memory_limit_oom_kills_the_hog(runner):
    name = unique("oom")
    proc = runner.cli("run", "--name", name, "-m", "32m", runner.image, "sh", "-c", MEMORY_HOG, check=False, timeout=90)
    assert proc.returncode == 137, output(proc)
    state = runner.daemon.inspect(name)["State"]
    assert state["OOMKilled"] is True, state
    assert state["ExitCode"] == 137, state
    assert runner.daemon.inspect(name)["HostConfig"]["Memory"] == 32 * 1024 * 1024
    # The host is untouched: the daemon (and its CLI) still work.
    assert runner.daemon.running and runner.daemon.ping()
    assert run_rm(runner, "echo", "alive").stdout == "alive\n"


@BOTH_RUNTIMES
def test_pids_limit_stops_a_fork_bomb(runner):
    # PID 1 starts the bomb, then execs a sleep (no fork needed) so it stays.
    bomb = "f() { f | f & }; f; exec sleep 60"
    cid = run_detached(runner, "--pids-limit", "20", "--", "sh", "-c", bomb)
    pids_max = cgroup_file(cid, "pids.max")
    assert pids_max.read_text().strip() == "20"
    current = cgroup_file(cid, "pids.current")
    events = cgroup_file(cid, "pids.events")
    peak = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        peak = max(peak, int(current.read_text()))
        time.sleep(0.05)
    assert peak <= 20, f"pids.current reached {peak}"
    assert read_keyed(events).get("max", 0) > 0, f"no fork was refused: {events.read_text()}"
    assert runner.fmt(cid, "{{.State.Running}}") == "true", "PID 1 of the bombed container died"
    assert runner.cli("rm", "-f", cid).stdout.strip() == cid


@BOTH_RUNTIMES
def test_cpus_throttles_a_busy_loop(runner):
    cid = run_detached(runner, "--cpus", "0.2", "--", "sh", "-c", "while :; do :; done")
    assert abs(cpu_quota(cid) - 0.2) < 1e-6
    time.sleep(0.5)
    used0, t0 = cpu_usage_ns(cid), time.monotonic()
    time.sleep(3)
    used1, t1 = cpu_usage_ns(cid), time.monotonic()
    share = (used1 - used0) / 1e9 / (t1 - t0)
    assert 0.02 < share < 0.3, f"the busy loop used {share:.2f} CPUs"
    stat_file = cgroup_file(cid, "cpu.stat")
    assert read_keyed(stat_file).get("nr_throttled", 0) > 0, stat_file.read_text()


@BOTH_RUNTIMES
def test_network_none_has_only_lo(runner):
    proc = run_rm(runner, "--network", "none", "--", "cat", "/proc/net/dev")
    assert net_interfaces(proc.stdout) == ["lo"], proc.stdout


@BOTH_RUNTIMES
def test_network_host_shows_the_hosts_interfaces(runner):
    proc = run_rm(runner, "--network", "host", "--", "cat", "/proc/net/dev")
    assert net_interfaces(proc.stdout) == net_interfaces(Path("/proc/net/dev").read_text()), proc.stdout


@BOTH_RUNTIMES
def test_exit_codes_come_back(runner):
    assert run_rm(runner, "sh", "-c", "exit 3", check=False).returncode == 3
    missing = run_rm(runner, "/no/such/command", check=False)
    assert missing.returncode == 127, output(missing)
    assert "/no/such/command" in missing.stderr, output(missing)
    not_exec = run_rm(runner, "/etc/passwd", check=False)
    assert not_exec.returncode == 126, output(not_exec)
    bad_flag = runner.cli("run", "--rm", "--no-such-flag", runner.image, "true", check=False)
    assert bad_flag.returncode == 125, output(bad_flag)
    assert "unknown flag: --no-such-flag" in bad_flag.stderr, output(bad_flag)


def test_detached_run_of_a_missing_command_exits_127(runner):
    # docker run -d exits with 127 (126) when the command cannot be run, and
    # the container is left exited (not running) with that exit code.
    name = unique("nocmd")
    proc = runner.cli("run", "-d", "--name", name, runner.image, "/no/such/command", check=False)
    assert proc.returncode == 127, output(proc)
    assert len(error_lines(proc)) == 1 and "/no/such/command" in proc.stderr, output(proc)
    state = runner.daemon.inspect(name)["State"]
    assert state["Status"] == "exited" and state["ExitCode"] == 127, state
    runner.cli("rm", name)


def test_memory_below_the_minimum_is_one_clear_line(runner):
    before = set(runner.daemon.all_ids())
    proc = runner.cli("run", "--rm", "-m", "4m", runner.image, "true", check=False)
    assert proc.returncode == 125, output(proc)
    lines = error_lines(proc)
    assert len(lines) == 1 and "Minimum memory limit allowed is 6MB" in lines[0], output(proc)
    assert set(runner.daemon.all_ids()) == before, "a refused container was left behind"


@BOTH_RUNTIMES
def test_stdout_and_stderr_are_kept_apart(runner):
    proc = run_rm(runner, "sh", "-c", "echo out; echo err >&2")
    assert (proc.stdout, proc.stderr) == ("out\n", "err\n"), output(proc)


@BOTH_RUNTIMES
def test_env_workdir_user_entrypoint(runner, tmp_path):
    env_file = tmp_path / "env.list"
    env_file.write_text("# a comment\n\nFROM_FILE=file value\nOVERRIDDEN=from-file\n")
    proc = runner.cli(
        "run", "--rm", "--env-file", env_file, "-e", "OVERRIDDEN=from-flag", "-e", "PLAIN=1",
        "-e", "FROM_CLI_ENV", runner.image, "env",
        env={"FROM_CLI_ENV": "inherited"},
    )  # fmt: skip
    env = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert env["FROM_FILE"] == "file value", proc.stdout
    assert env["OVERRIDDEN"] == "from-flag", proc.stdout
    assert env["PLAIN"] == "1", proc.stdout
    assert env["FROM_CLI_ENV"] == "inherited", proc.stdout
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", proc.stdout

    assert run_rm(runner, "-w", "/tmp/made/by/w", "--", "pwd").stdout == "/tmp/made/by/w\n"
    assert run_rm(runner, "-u", "nobody", "--", "sh", "-c", "echo $(id -u):$(id -g)").stdout == "65534:65534\n"
    assert run_rm(runner, "-u", "1000:1000", "--", "sh", "-c", "echo $(id -u):$(id -g)").stdout == "1000:1000\n"
    assert run_rm(runner, "--entrypoint", "echo", "--", "hello", "world").stdout == "hello world\n"


@BOTH_RUNTIMES
def test_read_only_root(runner):
    proc = run_rm(runner, "--read-only", "--", "sh", "-c", "touch /new-file", check=False)
    assert proc.returncode != 0, output(proc)
    assert "Read-only file system" in proc.stderr, output(proc)
    assert run_rm(runner, "sh", "-c", "touch /new-file && echo ok").stdout == "ok\n"


# =========================================================================== lifecycle


def test_run_detached_and_ps(runner):
    name = unique("ps")
    cid = run_detached(runner, "--name", name, "--", "sh", "-c", "sleep 600; echo done")
    row = ps_row(runner, cid)
    assert row is not None, runner.cli("ps").stdout
    assert row["IMAGE"] == runner.image
    # docker: the command joined with spaces, cut to 20 chars with "…", quoted.
    assert row["COMMAND"] == '"sh -c sleep 600; ec…"', row
    assert CREATED_RE.match(row["CREATED"]), row
    assert row["STATUS"].startswith("Up "), row
    assert row["PORTS"] == ""
    assert row["NAMES"] == name
    assert cid[:12] in runner.cli("ps", "-q").stdout.split()
    assert cid in runner.cli("ps", "-q", "--no-trunc").stdout.split()
    short = run_detached(runner, "sleep", "600")
    assert ps_row(runner, short)["COMMAND"] == '"sleep 600"'


def test_ps_all_shows_exited(runner):
    cid = run_detached(runner, "sh", "-c", "exit 4")
    assert wait_exit(runner, cid) == 4
    assert ps_row(runner, cid) is None, "an exited container is listed without -a"
    assert cid[:12] not in runner.cli("ps", "-q").stdout.split()
    row = ps_row(runner, cid, "-a")
    assert row is not None and row["STATUS"].startswith("Exited (4) "), row
    assert cid[:12] in runner.cli("ps", "-a", "-q").stdout.split()
    # docker's --format: a Go template per container, `table` with headers.
    lines = runner.cli("ps", "-a", "--format", "{{.ID}} {{.State}} {{.Status}}").stdout.splitlines()
    assert any(line.startswith(f"{cid[:12]} exited Exited (4) ") for line in lines), lines
    table = runner.cli("ps", "-a", "--format", "table {{.ID}}\t{{.State}}").stdout.splitlines()
    assert table[0].split() == ["CONTAINER", "ID", "STATE"], table


def test_logs_tail_and_timestamps(runner):
    # stdout and stderr are read by two threads of the monitor, as in
    # docker: only a pause orders lines across the two streams.
    cid = run_detached(runner, "sh", "-c", "echo err >&2; sleep 0.3; echo one; echo two; echo three")
    assert wait_exit(runner, cid) == 0
    logs = runner.cli("logs", cid)
    assert (logs.stdout, logs.stderr) == ("one\ntwo\nthree\n", "err\n"), output(logs)
    tail = runner.cli("logs", "--tail", "2", cid)
    assert (tail.stdout, tail.stderr) == ("two\nthree\n", ""), output(tail)
    assert runner.cli("logs", "--tail", "all", cid).stdout == "one\ntwo\nthree\n"
    stamped = runner.cli("logs", "-t", cid)
    lines = stamped.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["one", "two", "three"], stamped.stdout
    times = [parse_time(line.split(" ", 1)[0]) for line in lines]
    assert times == sorted(times)
    assert stamped.stderr.split(" ", 1)[1] == "err\n"


def test_logs_follow_until_exit(runner):
    cid = run_detached(runner, "sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 1; done")
    follower = runner.daemon.popen("logs", "-f", cid)
    try:
        time.sleep(1)
        assert follower.poll() is None, "logs -f returned while the container still runs"
        out, err = follower.communicate(timeout=15)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    assert out == "tick 1\ntick 2\ntick 3\n", out


@BOTH_RUNTIMES
def test_stop_sends_sigterm_then_sigkill(runner):
    trapper = run_detached(runner, "sh", "-c", 'trap "echo got TERM; exit 7" TERM; while :; do sleep 0.1; done')
    time.sleep(0.3)  # let the shell install its trap
    start = time.monotonic()
    assert runner.cli("stop", trapper).stdout.strip() == trapper
    assert time.monotonic() - start < 5, "stop waited although the container ended on SIGTERM"
    assert runner.fmt(trapper, "{{.State.ExitCode}}") == "7"
    assert "got TERM" in runner.cli("logs", trapper).stdout

    # sleep as PID 1 has no handler: SIGTERM is ignored, SIGKILL after -t.
    stubborn = run_detached(runner, "sleep", "600")
    start = time.monotonic()
    assert runner.cli("stop", "-t", "1", stubborn).stdout.strip() == stubborn
    elapsed = time.monotonic() - start
    assert 0.9 <= elapsed < 8, f"stop -t 1 took {elapsed:.1f}s"
    assert runner.fmt(stubborn, "{{.State.ExitCode}}") == "137"
    assert runner.fmt(stubborn, "{{.State.Status}}") == "exited"


@BOTH_RUNTIMES
def test_kill_with_signal_reaches_the_trap(runner):
    cid = run_detached(runner, "sh", "-c", 'trap "echo got USR1" USR1; while :; do sleep 0.1; done')
    time.sleep(0.3)
    assert runner.cli("kill", "-s", "USR1", cid).stdout.strip() == cid
    wait_for(lambda: "got USR1" in runner.cli("logs", cid).stdout, 5, "the trap's output")
    assert runner.fmt(cid, "{{.State.Running}}") == "true"
    assert runner.cli("kill", cid).stdout.strip() == cid  # default: SIGKILL
    assert wait_exit(runner, cid) == 137


def test_wait_prints_the_exit_code(runner):
    cid = run_detached(runner, "sh", "-c", "sleep 1; exit 5")
    proc = runner.cli("wait", cid)
    assert proc.stdout == "5\n", output(proc)


def test_inspect(runner):
    name = unique("inspect")
    running = run_detached(runner, "--name", name, "-e", "FOO=bar", "-m", "64m", "--", "sh", "-c", "sleep 3; exit 2")
    live = runner.daemon.inspect(name)
    assert live["State"]["Running"] is True and live["State"]["Status"] == "running", live["State"]
    pid = live["State"]["Pid"]
    assert isinstance(pid, int) and pid > 0 and Path(f"/proc/{pid}").exists(), live["State"]

    assert wait_exit(runner, running) == 2
    obj = runner.daemon.inspect(name)
    assert obj["Id"] == running
    assert obj["Name"].lstrip("/") == name, obj["Name"]
    state = obj["State"]
    assert state["Status"] == "exited" and state["Running"] is False, state
    assert state["ExitCode"] == 2 and state["OOMKilled"] is False, state
    assert state["Pid"] == 0, state
    assert parse_time(state["FinishedAt"]) >= parse_time(state["StartedAt"]), state
    assert obj["RestartCount"] == 0
    assert obj["Config"]["Image"] == runner.image
    assert obj["Config"]["Cmd"] == ["sh", "-c", "sleep 3; exit 2"]
    assert "FOO=bar" in obj["Config"]["Env"]
    assert obj["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert isinstance(obj["NetworkSettings"]["IPAddress"], str)

    raw = runner.cli("inspect", name).stdout
    assert raw.startswith("[\n    {\n"), "inspect does not indent with 4 spaces as docker"
    assert runner.cli("inspect", "-f", "{{.State.ExitCode}}", name).stdout == "2\n"
    assert runner.cli("inspect", "--format", "code={{.State.ExitCode}} {{json .Config.Cmd}}", running).stdout == (
        'code=2 ["sh","-c","sleep 3; exit 2"]\n'
    )
    missing = runner.cli("inspect", "no-such-container", check=False)
    assert missing.returncode == 1, output(missing)
    assert "Error: No such object: no-such-container" in missing.stderr, output(missing)


def test_create_start_and_attach(runner):
    name = unique("created")
    proc = runner.cli("create", "--name", name, runner.image, "echo", "hi")
    cid = runner.track(proc.stdout.strip())
    assert ID_RE.match(cid), output(proc)
    assert ps_row(runner, cid, "-a")["STATUS"] == "Created"
    assert runner.cli("start", name).stdout == f"{name}\n"
    assert wait_exit(runner, cid) == 0
    assert runner.cli("logs", name).stdout == "hi\n"

    attached = runner.track(
        runner.cli("create", runner.image, "sh", "-c", "echo attached; echo e >&2; exit 6").stdout.strip()
    )
    proc = runner.cli("start", "-a", attached, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (6, "attached\n", "e\n"), output(proc)


def test_rm_of_running_refuses_and_rm_force_cleans_up(runner):
    cid = run_detached(runner, "sleep", "600")
    proc = runner.cli("rm", cid, check=False)
    assert proc.returncode == 1, output(proc)
    assert proc.stderr.startswith("Error response from daemon: "), output(proc)
    assert runner.fmt(cid, "{{.State.Running}}") == "true"

    assert runner.cli("rm", "-f", cid).stdout == f"{cid}\n"
    assert runner.cli("inspect", cid, check=False).returncode == 1
    assert leftovers(runner.daemon, [cid]) == []

    exited = run_detached(runner, "true")
    assert wait_exit(runner, exited) == 0
    assert runner.cli("rm", exited).stdout == f"{exited}\n"
    assert leftovers(runner.daemon, [exited]) == []

    # One missing name does not stop the others; the exit code says so.
    other = run_detached(runner, "true")
    wait_exit(runner, other)
    mixed = runner.cli("rm", "no-such-container", other, check=False)
    assert mixed.returncode == 1 and mixed.stdout == f"{other}\n", output(mixed)
    assert "Error response from daemon: " in mixed.stderr


def test_auto_remove_leaves_nothing(runner):
    cid = run_detached(runner, "--rm", "--", "sh", "-c", "sleep 1")
    wait_for(lambda: runner.cli("inspect", cid, check=False).returncode == 1, 15, "--rm to remove the container")
    assert leftovers(runner.daemon, [cid]) == []
    name = unique("rm")
    assert runner.cli("run", "--rm", "--name", name, runner.image, "true").returncode == 0
    assert runner.cli("inspect", name, check=False).returncode == 1
    assert name not in runner.cli("ps", "-a").stdout


def test_name_conflict_is_rejected(runner):
    name = unique("taken")
    first = runner.track(runner.cli("create", "--name", name, runner.image, "true").stdout.strip())
    proc = runner.cli("create", "--name", name, runner.image, "true", check=False)
    assert proc.returncode == 125, output(proc)
    assert "already in use" in proc.stderr, output(proc)
    proc = runner.cli("run", "--name", name, runner.image, "true", check=False)
    assert proc.returncode == 125, output(proc)
    assert runner.daemon.all_ids() == [first]


# =========================================================================== images


def test_pull_prints_plain_progress_and_the_reference(runner):
    extra = marker_layer("pulled/marker", unique("pull") + "\n")
    digest = runner.push("e2e/pull-progress", busybox_image(extra), "1")
    proc = runner.cli("pull", "e2e/pull-progress:1")
    text = proc.stdout + proc.stderr
    assert "\x1b" not in text and "\r" not in text, f"terminal codes without a terminal:\n{output(proc)}"
    assert f"{busybox_layer().short_id}: Already exists" in text, output(proc)
    assert f"{extra.short_id}: Pull complete" in text, output(proc)
    assert f"Digest: {digest}" in text, output(proc)
    assert "Status: Downloaded newer image for " in text, output(proc)
    assert proc.stdout.splitlines()[-1] == runner.ref("e2e/pull-progress", "1"), output(proc)
    again = runner.cli("pull", "e2e/pull-progress:1")
    assert "Status: Image is up to date for " in again.stdout + again.stderr, output(again)


def test_run_pulls_a_missing_image(runner):
    runner.push("e2e/autopull", busybox_image(marker_layer("auto", "auto\n")), "1")
    proc = runner.cli("run", "--rm", "e2e/autopull:1", "cat", "/auto")
    assert proc.stdout == "auto\n", f"pull progress must go to stderr\n{output(proc)}"
    assert "Unable to find image '" in proc.stderr and "autopull:1' locally" in proc.stderr, output(proc)


def test_pull_never_on_a_missing_image_fails(runner):
    runner.push("e2e/never", busybox_image(marker_layer("never", "x\n")), "1")
    proc = runner.cli("run", "--rm", "--pull", "never", "e2e/never:1", "true", check=False)
    assert proc.returncode == 125, output(proc)
    assert "No such image" in proc.stderr, output(proc)


def test_pull_always_repulls(runner):
    runner.push("e2e/moving", busybox_image(marker_layer("version", "v1\n")), "1")
    assert runner.cli("run", "--rm", "e2e/moving:1", "cat", "/version").stdout == "v1\n"
    runner.push("e2e/moving", busybox_image(marker_layer("version", "v2\n")), "1")
    assert runner.cli("run", "--rm", "e2e/moving:1", "cat", "/version").stdout == "v1\n", "missing pulled again"
    proc = runner.cli("run", "--rm", "--pull", "always", "e2e/moving:1", "cat", "/version")
    assert proc.stdout == "v2\n", output(proc)


def test_images_table(runner):
    rows = table(runner.cli("images").stdout, IMAGES_HEADER)
    busybox_id = busybox_image().config_digest.split(":", 1)[1][:12]
    mine = [row for row in rows if row["REPOSITORY"] == f"{runner.wharf.docker_host}/{runner.image}"]
    assert len(mine) == 1, rows
    row = mine[0]
    assert row["TAG"] == "latest"
    assert row["IMAGE ID"] == busybox_id
    assert row["CREATED"].endswith(" ago"), row
    assert SIZE_RE.match(row["SIZE"]), row
    assert busybox_id in runner.cli("images", "-q").stdout.split()


def test_rmi(runner):
    image = busybox_image(marker_layer("rmi", unique("rmi") + "\n"))
    runner.push("e2e/rmi", image, "1")
    runner.cli("pull", "e2e/rmi:1")
    image_id = image.config_digest
    proc = runner.cli("rmi", "e2e/rmi:1")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Untagged: ") and "e2e/rmi:1" in lines[0], output(proc)
    assert f"Deleted: {image_id}" in lines, output(proc)
    assert image_id.split(":")[1][:12] not in runner.cli("images", "-q").stdout.split()


def test_rmi_of_an_image_in_use_fails(runner):
    runner.push("e2e/inuse", busybox_image(marker_layer("inuse", "x\n")), "1")
    cid = runner.track(runner.cli("create", "e2e/inuse:1", "true").stdout.strip())
    proc = runner.cli("rmi", "e2e/inuse:1", check=False)
    assert proc.returncode == 1, output(proc)
    assert proc.stderr.startswith("Error response from daemon: "), output(proc)
    assert "e2e/inuse" in runner.cli("images").stdout
    runner.cli("rm", cid)
    runner.cli("rmi", "e2e/inuse:1")


def test_image_prune_all(runner):
    runner.push("e2e/prune", busybox_image(marker_layer("prune", "x\n")), "1")
    runner.cli("pull", "e2e/prune:1")
    keeper = runner.track(runner.cli("create", runner.image, "true").stdout.strip())

    asked = runner.cli("image", "prune", "-a", input="n\n")
    assert "Are you sure you want to continue? [y/N]" in asked.stdout, output(asked)
    assert "e2e/prune" in runner.cli("images").stdout, "prune without -f deleted after 'n'"

    proc = runner.cli("image", "prune", "-a", "-f")
    assert "Deleted Images:" in proc.stdout, output(proc)
    assert re.search(r"^Total reclaimed space: \d+(\.\d+)?(B|kB|MB|GB)$", proc.stdout, re.M), output(proc)
    listed = runner.cli("images").stdout
    assert "e2e/prune" not in listed, listed
    assert f"{runner.wharf.docker_host}/{runner.image} " in listed, "prune -a removed an image in use"
    runner.cli("rm", keeper)


def test_unknown_image_is_one_clear_line(runner):
    proc = runner.cli("pull", "e2e/does-not-exist:1", check=False)
    assert proc.returncode == 1, output(proc)
    errors = error_lines(proc)
    assert len(errors) == 1 and "e2e/does-not-exist" in errors[0], output(proc)

    proc = runner.cli("run", "--rm", "e2e/does-not-exist:1", "true", check=False)
    assert proc.returncode == 125, output(proc)
    errors = error_lines(proc)
    assert len(errors) == 1 and "e2e/does-not-exist" in errors[0], output(proc)


def test_unreachable_registry_is_one_clear_line(runner):
    host = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = runner.cli("pull", f"{host}/e2e/busybox:1", check=False, timeout=60)
    assert proc.returncode == 1, output(proc)
    errors = error_lines(proc)
    assert len(errors) == 1 and host in errors[0], output(proc)
    proc = runner.cli("run", "--rm", f"{host}/e2e/busybox:1", "true", check=False, timeout=60)
    assert proc.returncode == 125, output(proc)
    errors = error_lines(proc)
    assert len(errors) == 1 and host in errors[0], output(proc)
    assert time.monotonic() - start < 45, "the unreachable registry was retried for too long"


def test_login_logout_and_private_pull(runner_factory, wharf_auth):
    password = wharf_auth.users["alice"]
    env = runner_factory(wharf_auth, api=wharf_auth.api("alice"))
    image = busybox_image(marker_layer("private", "secret content\n"))
    env.push("team/private", image, "1")
    host = wharf_auth.docker_host

    denied = env.cli("pull", "team/private:1", check=False)
    assert denied.returncode == 1, output(denied)

    files_before = snapshot(env.daemon.root)
    wrong = env.cli("login", "-u", "alice", "-p", "wrong-password", host, check=False)
    assert wrong.returncode == 1, output(wrong)
    assert "Login Succeeded" not in wrong.stdout
    assert "WARNING! Using --password via the CLI is insecure. Use --password-stdin." in wrong.stderr, output(wrong)

    ok = env.cli("login", "-u", "alice", "--password-stdin", host, input=password + "\n")
    assert "Login Succeeded" in ok.stdout, output(ok)
    assert password not in ok.stdout + ok.stderr

    # Where the login went: files that changed and hold the user, the registry or the secret.
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    stored = [
        path
        for path, sig in snapshot(env.daemon.root).items()
        if files_before.get(path) != sig
        and any(s.encode() in path.read_bytes() for s in ("alice", host, password, basic))
    ]
    assert stored, "login stored nothing in the daemon's root"
    loose = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in stored if stat.S_IMODE(p.stat().st_mode) != 0o600}
    assert not loose, f"credentials stored with a mode other than 0600: {loose}"
    log = env.daemon.log_text()
    assert password not in log and basic not in log, "the daemon log holds the password"

    assert env.cli("run", "--rm", "team/private:1", "cat", "/private").stdout == "secret content\n"
    log = env.daemon.log_text()
    assert password not in log and basic not in log, "the daemon log holds the password"

    out = env.cli("logout", host)
    assert out.stdout.strip() == f"Removing login credentials for {host}", output(out)
    env.cli("rmi", "team/private:1")
    after = env.cli("pull", "team/private:1", check=False)
    assert after.returncode == 1, f"pulled a private image after logout\n{output(after)}"


def snapshot(root: Path) -> dict[Path, tuple]:
    """(size, mtime, inode) of every regular file under root, unpacked layers excepted."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here.parent.name == "layers":
            dirnames[:] = [d for d in dirnames if d != "diff"]
        for name in filenames:
            path = here / name
            try:
                st = path.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):
                out[path] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


# =========================================================================== malicious and big images


def test_test_images_push_to_the_registry(wharf, tmp_path):
    """The images this file builds by hand are valid and reach the registry as
    built (runs without the runner: it checks the builders themselves)."""
    api = wharf.api()
    for repo, docker in (("e2e/busybox", True), ("e2e/busybox-oci", False)):
        image = busybox_image()
        digest = image.push(api, repo, "latest", docker=docker)
        manifest = assert_image_in_registry(api, repo, "latest", digest)
        assert manifest["mediaType"].startswith("application/vnd.docker" if docker else "application/vnd.oci")
        names = dict(layer_names(busybox_layer().blob))
        assert names["bin/sh"] == "busybox" and "bin/busybox" in names and "etc/passwd" in names

    many = many_layers_image()
    digest = many.push(api, "e2e/layers100", "1")
    manifest = assert_image_in_registry(api, "e2e/layers100", "1", digest)
    assert len(manifest["layers"]) == MANY_LAYERS == len({layer.digest for layer in many.layers})
    config = json.loads(api.assert_blob("e2e/layers100", manifest["config"]["digest"]))
    assert len(config["rootfs"]["diff_ids"]) == MANY_LAYERS

    targets = EvilTargets(tmp_path / "outside")
    for kind in EVIL_KINDS:
        layer = evil_layer(kind, targets)
        digest = busybox_image(layer).push(api, f"evil/{kind}", "1")
        manifest = assert_image_in_registry(api, f"evil/{kind}", "1", digest)
        assert manifest["layers"][-1]["digest"] == layer.digest
        entries = layer_names(api.assert_blob(f"evil/{kind}", layer.digest))
        bad = entries[2:]
        if kind == "dotdot":
            assert bad == [("../" * 64 + str(targets.dotdot_file).lstrip("/"), "")], bad
        elif kind.endswith("symlink"):
            assert bad[0][0] == "evil" and bad[0][1].endswith(str(targets.target_dir).lstrip("/")), bad
            assert bad[1] == ("evil/file", ""), bad
        else:
            assert bad[0][0] == "link" and bad[0][1].endswith(str(targets.victim).lstrip("/")), bad
            assert bad[1] == ("link", ""), bad
    assert targets.problems() == []


@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_malicious_layer_fails_to_pull_and_writes_nothing_outside(runner, tmp_path, kind):
    targets = EvilTargets(tmp_path / "outside")
    layer = evil_layer(kind, targets)
    runner.push(f"evil/{kind}", busybox_image(layer), "1")
    proc = runner.cli("pull", f"evil/{kind}:1", check=False)
    assert proc.returncode == 1, output(proc)
    assert layer.digest in proc.stdout + proc.stderr, f"the error does not name the layer\n{output(proc)}"
    assert targets.problems() == [], output(proc)
    assert f"evil/{kind}" not in runner.cli("images").stdout
    run = runner.cli("run", "--rm", "--pull", "never", f"evil/{kind}:1", "true", check=False)
    assert run.returncode == 125, output(run)
    assert targets.problems() == []


def test_pull_interrupted_by_a_daemon_crash_resumes(runner_factory):
    """kill -9 of the daemon in the middle of a pull records no image and
    leaves no partial layer; the next pull reuses the layers that were
    complete and fetches only the rest."""
    env = runner_factory()
    daemon = env.daemon
    # Three small layers and one much bigger one, so the small ones are
    # committed while the big one is still coming: the crash lands between.
    sizes = [8 << 20, 8 << 20, 8 << 20, 128 << 20]
    big = []
    for i, size in enumerate(sizes):
        big.append(make_layer([file_entry(f"big{i}", os.urandom(size))], compresslevel=1))
    image = busybox_image(*big)
    repo = unique("bigpull")
    env.push(repo, image)
    hexes = [layer.digest.split(":", 1)[1] for layer in big]
    layers_dir = daemon.root / "layers"

    def committed() -> list[str]:
        return [h for h in hexes if (layers_dir / h / "diff").is_dir()]

    puller = daemon.popen("pull", repo)
    wait_for(lambda: committed() or puller.poll() is not None, 120, "a first layer in the store")
    daemon.kill9()
    puller.wait(30)
    done = committed()
    assert puller.returncode != 0, "the pull finished before the daemon was killed: make the layers bigger"
    assert 0 < len(done) < len(hexes), f"{len(done)} of {len(hexes)} layers were complete at the crash"

    daemon.start()
    assert env.ref(repo) not in env.cli("images").stdout
    assert [p.name for p in (daemon.root / "tmp").iterdir()] == [], "a partial layer survived the restart"
    again = env.cli("pull", repo, timeout=300)
    for h in done:
        assert f"{h[:12]}: Already exists" in again.stdout, output(again)
    assert "Downloaded newer image" in again.stdout, output(again)
    total = env.cli("run", "--rm", repo, "sh", "-c", "cat /big0 /big1 /big2 /big3 | wc -c").stdout
    assert total.strip() == str(sum(sizes))


def test_full_disk_fails_the_pull_cleanly(runner_registry, tmp_path):
    """A state dir on a full filesystem: the pull fails with one line naming
    the full disk, records nothing and keeps no partial layer; once the space
    is back the daemon pulls and runs as usual."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=10m", "tmpfs", str(mnt)], check=True)
    daemon = None
    try:
        daemon = RunnerDaemon(
            runner_binary(), mnt / "root", Path(free_unix_socket_path()), tmp_path / "daemon.log",
            runner_registry.docker_host, **dict(zip(("bridge", "bridge_subnet"), unique_bridge())),
        )
        daemon.start()
        env = RunnerEnv(daemon, runner_registry)
        repo = unique("toobig")
        image = busybox_image(make_layer([file_entry("big", os.urandom(16 << 20))], compresslevel=1))
        env.push(repo, image)
        proc = daemon.cli("pull", repo, check=False, timeout=120)
        assert proc.returncode == 1, output(proc)
        lines = error_lines(proc)
        assert len(lines) == 1 and "No space left on device" in lines[0], output(proc)
        assert repo not in daemon.cli("images").stdout
        assert list((mnt / "root" / "tmp").iterdir()) == [], "a partial layer was left in tmp/"
        big = image.layers[-1].digest.split(":", 1)[1]
        assert not (mnt / "root" / "layers" / big).exists()
        assert daemon.cli("run", "--rm", env.image, "echo", "still fine", timeout=120).stdout == "still fine\n"
        daemon.cli("rmi", env.image)
    finally:
        if daemon is not None and daemon.running:
            daemon.stop()
        if daemon is not None:
            daemon.remove_bridge()
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_image_of_100_layers_runs(runner):
    runner.push("e2e/layers100", many_layers_image(), "1")
    proc = runner.cli("run", "--rm", "e2e/layers100:1", "sh", "-c", "ls /layers; cat /layers/*", timeout=180)
    lines = proc.stdout.splitlines()
    names = [f"f{i:03d}" for i in range(MANY_LAYERS)]
    assert lines[:MANY_LAYERS] == names, output(proc)
    assert lines[MANY_LAYERS:] == [f"layer {i:03d}" for i in range(MANY_LAYERS)], output(proc)


# =========================================================================== daemon restart


def wait_gone(pid: int, timeout: float) -> None:
    def gone():
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
        except (FileNotFoundError, IndexError):
            return True

    wait_for(gone, timeout, f"process {pid} to exit")


@pytest.mark.parametrize("how", ["kill9", "sigterm"])
def test_container_survives_a_daemon_restart(runner_factory, how):
    env = runner_factory()
    daemon = env.daemon
    cid = env.track(env.cli("run", "-d", env.image, "sleep", "300", timeout=120).stdout.strip())
    assert ID_RE.match(cid)
    pid = int(env.daemon.fmt(cid, "{{.State.Pid}}"))
    assert pid > 0

    if how == "kill9":
        daemon.kill9()
    else:
        assert daemon.stop() == 0, daemon.log_tail()
    assert Path(f"/proc/{pid}").exists(), "the container died with the daemon"
    daemon.start()

    row = ps_row(env, cid)
    assert row is not None and row["STATUS"].startswith("Up "), env.cli("ps", "-a").stdout
    state = daemon.inspect(cid)["State"]
    assert state["Running"] is True and state["Pid"] == pid, state
    start = time.monotonic()
    assert env.cli("stop", "-t", "1", cid).stdout.strip() == cid
    assert time.monotonic() - start < 10
    wait_gone(pid, 5)
    assert ps_row(env, cid, "-a")["STATUS"].startswith("Exited (137) ")


def test_container_that_exited_while_the_daemon_was_down(runner_factory):
    env = runner_factory()
    daemon = env.daemon
    env.cli("pull", env.image, timeout=120)
    cid = env.track(env.cli("run", "-d", env.image, "sh", "-c", "sleep 2; exit 9").stdout.strip())
    pid = int(daemon.fmt(cid, "{{.State.Pid}}"))
    daemon.kill9()
    wait_gone(pid, 20)
    daemon.start()
    state = daemon.inspect(cid)["State"]
    assert state["Status"] == "exited" and state["Running"] is False, state
    assert state["ExitCode"] == 9, state
    assert ps_row(env, cid, "-a")["STATUS"].startswith("Exited (9) ")
    assert env.cli("wait", cid).stdout == "9\n"


# =========================================================================== no daemon

CLIENT_COMMANDS = [
    (["ps"], 1),
    (["ps", "-a"], 1),
    (["images"], 1),
    (["pull", "e2e/busybox"], 1),
    (["logs", "x"], 1),
    (["stop", "x"], 1),
    (["rm", "-f", "x"], 1),
    (["inspect", "x"], 1),
    (["login", "-u", "u", "--password-stdin", "localhost:1"], 1),
    (["run", "--rm", "e2e/busybox", "true"], 125),
    (["create", "e2e/busybox", "true"], 125),
]


def _no_daemon_checks(cmd: list[str], expected: int, socket_path: str, via_flag: bool) -> None:
    binary = runner_binary()
    assert binary.is_file(), f"no wharf-runner binary at {binary}"
    env = {**os.environ, "NO_COLOR": "1"}
    if via_flag:
        env.pop("WHARF_RUNNER_SOCKET", None)
        argv = [str(binary), "--socket", socket_path, *cmd]
    else:
        env["WHARF_RUNNER_SOCKET"] = socket_path
        argv = [str(binary), *cmd]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, input="pw\n", env=env)
    assert proc.returncode == expected, output(proc)
    lines = stderr_lines(proc)
    assert len(lines) == 1, f"not one line\n{output(proc)}"
    assert NOT_RUNNING_HINT in lines[0] and "wharf-runner daemon" in lines[0], output(proc)
    assert f"unix://{socket_path}" in lines[0], output(proc)
    assert proc.stdout == "", output(proc)


@pytest.mark.parametrize("cmd,expected", CLIENT_COMMANDS, ids=[" ".join(c[0][:2]) for c in CLIENT_COMMANDS])
def test_daemon_not_running_says_so_in_one_line(cmd, expected):
    # A socket path with nothing there, given through the environment...
    missing = free_unix_socket_path()
    _no_daemon_checks(cmd, expected, missing, via_flag=False)
    # ...and a socket nobody listens on (connection refused), given by --socket.
    with tempfile.TemporaryDirectory(prefix="wr-") as d:
        path = os.path.join(d, "dead.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)  # bound, never listening: connect() is refused
        try:
            _no_daemon_checks(cmd, expected, path, via_flag=True)
        finally:
            sock.close()
