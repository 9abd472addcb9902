"""wharf-runner volumes end to end: `-v` bind mounts, named and anonymous
volumes (with docker's copy-up), `--tmpfs`, `--read-only`, the `volume`
commands, and images whose mount destinations are symlinks out of the rootfs.

Container tests run under the built-in runtime and under runc (BOTH_RUNTIMES).
Every test removes its containers and then every volume (`volume prune -a -f`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
from pathlib import Path

import pytest
from runner_support import (
    ID_RE,
    busybox_image,
    dir_entry,
    file_entry,
    make_layer,
    output,
    symlink_entry,
    unique,
)

BOTH_RUNTIMES = pytest.mark.parametrize("runner", ["wharf", "runc"], indirect=True)
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
LS_HEADER = "DRIVER    VOLUME NAME"
EROFS = "Read-only file system"


@pytest.fixture
def vr(runner):
    """The `runner` env; afterwards its containers go, then every volume."""
    yield runner
    ids = runner.cli("ps", "-a", "-q", "--no-trunc", check=False).stdout.split()
    for cid in ids:
        runner.cli("rm", "-f", cid, check=False)
    runner.cli("volume", "prune", "-a", "-f", check=False)
    left = runner.cli("volume", "ls", "-q").stdout.split()
    assert not left, f"volumes left after prune -a -f: {left}"


def run_rm(r, *args, check: bool = True, image: str | None = None) -> subprocess.CompletedProcess:
    """`run --rm FLAGS IMAGE CMD` (flags before a "--" marker)."""
    i = args.index("--")
    return r.cli("run", "--rm", *args[:i], image or r.image, *args[i + 1 :], check=check, timeout=60)


def volume_ls(r) -> list[str]:
    return r.cli("volume", "ls", "-q").stdout.split()


def volume_data(r, name: str) -> Path:
    return Path(r.daemon.root) / "volumes" / name / "_data"


def push_image(r, repo: str, *entries) -> str:
    r.push(repo, busybox_image(make_layer(list(entries))))
    return repo


def mount_line(text: str, dest: str) -> list[str]:
    """The /proc/mounts line of `dest`, split."""
    lines = [line.split() for line in text.splitlines() if line.split()[1:2] == [dest]]
    assert lines, f"{dest} is not a mount point:\n{text}"
    return lines[-1]


# =========================================================================== bind mounts


@BOTH_RUNTIMES
def test_bind_mount_rw_the_host_sees_the_containers_writes(vr, tmp_path):
    host = tmp_path / "rw"
    host.mkdir()
    (host / "from-host").write_text("host\n")
    proc = run_rm(vr, "-v", f"{host}:/data", "--", "sh", "-c",
                  "cat /data/from-host; echo container > /data/from-ctr; cat /proc/mounts")  # fmt: skip
    assert proc.stdout.startswith("host\n"), output(proc)
    assert (host / "from-ctr").read_text() == "container\n"
    assert "rw" in mount_line(proc.stdout, "/data")[3].split(",")


@BOTH_RUNTIMES
def test_bind_mount_ro_refuses_writes(vr, tmp_path):
    host = tmp_path / "ro"
    host.mkdir()
    (host / "f").write_text("keep\n")
    proc = run_rm(vr, "-v", f"{host}:/data:ro", "--", "sh", "-c",
                  "cat /data/f; echo x > /data/f; echo x > /data/new", check=False)  # fmt: skip
    assert proc.returncode != 0, output(proc)
    assert proc.stdout == "keep\n", output(proc)
    assert EROFS in proc.stderr, output(proc)
    assert (host / "f").read_text() == "keep\n"
    assert not (host / "new").exists()


@BOTH_RUNTIMES
def test_bind_mount_of_a_missing_host_dir_creates_it(vr, tmp_path):
    host = tmp_path / "made" / "by" / "run"
    run_rm(vr, "-v", f"{host}:/data", "--", "sh", "-c", "echo hi > /data/f")
    assert (host / "f").read_text() == "hi\n"


def test_inspect_shows_mounts_binds_and_tmpfs(vr, tmp_path):
    vol = unique("insp")
    cid = vr.track(vr.cli("create", "-v", f"{tmp_path}:/b:ro", "-v", f"{vol}:/v", "-v", "/anon",
                          "--tmpfs", "/t:size=1m", vr.image).stdout.strip())  # fmt: skip
    info = vr.daemon.inspect(cid)
    assert info["HostConfig"]["Binds"] == [f"{tmp_path}:/b:ro", f"{vol}:/v"]
    assert info["HostConfig"]["Tmpfs"] == {"/t": "size=1m"}
    assert info["Config"]["Volumes"] == {"/anon": {}}
    mounts = {m["Destination"]: m for m in info["Mounts"]}
    assert mounts["/b"] == {
        "Type": "bind", "Source": str(tmp_path), "Destination": "/b", "Mode": "ro", "RW": False,
        "Propagation": "rprivate",
    }  # fmt: skip
    assert mounts["/v"] == {
        "Type": "volume", "Name": vol, "Source": str(volume_data(vr, vol)), "Destination": "/v",
        "Driver": "local", "Mode": "z", "RW": True, "Propagation": "",
    }  # fmt: skip
    anon = mounts["/anon"]["Name"]
    assert ID_RE.match(anon), mounts["/anon"]
    assert sorted(volume_ls(vr)) == sorted([vol, anon])
    assert "/t" not in mounts, "docker lists --tmpfs in HostConfig.Tmpfs only"


# =========================================================================== volumes


@BOTH_RUNTIMES
def test_named_volume_persists_across_containers(vr):
    vol = unique("data")
    run_rm(vr, "-v", f"{vol}:/data", "--", "sh", "-c", "echo kept > /data/f")
    assert vol in volume_ls(vr)
    assert (volume_data(vr, vol) / "f").read_text() == "kept\n"
    proc = run_rm(vr, "-v", f"{vol}:/other:ro", "--", "cat", "/other/f")
    assert proc.stdout == "kept\n", output(proc)


@BOTH_RUNTIMES
def test_new_volume_gets_the_images_content(vr):
    repo = push_image(vr, unique("e2e/vol-seed"), dir_entry("app", 0o750), file_entry("app/seed.txt", "seed\n"),
                      dir_entry("app/sub"), file_entry("app/sub/deep", "deep\n"))  # fmt: skip
    vr.cli("pull", repo, timeout=120)
    vol = unique("seeded")
    proc = run_rm(vr, "-v", f"{vol}:/app", "--", "sh", "-c",
                  "cat /app/seed.txt /app/sub/deep; echo mine > /app/seed.txt", image=repo)  # fmt: skip
    assert proc.stdout == "seed\ndeep\n", output(proc)
    data = volume_data(vr, vol)
    assert (data / "seed.txt").read_text() == "mine\n"
    assert oct(data.stat().st_mode & 0o7777) == oct(0o750), "the directory's mode is not copied"
    # Not empty any more: no second copy-up over the container's change.
    assert run_rm(vr, "-v", f"{vol}:/app", "--", "cat", "/app/seed.txt", image=repo).stdout == "mine\n"
    # nocopy: an empty volume stays empty.
    vol2 = unique("nocopy")
    assert run_rm(vr, "-v", f"{vol2}:/app:nocopy", "--", "ls", "-A", "/app", image=repo).stdout == ""


@BOTH_RUNTIMES
def test_anonymous_volumes_go_with_rm_v_and_with_rm(vr):
    cid = vr.track(vr.cli("run", "-d", "-v", "/scratch", vr.image, "sh", "-c", "echo x > /scratch/f").stdout.strip())
    assert vr.cli("wait", cid).stdout.strip() == "0"
    name = vr.daemon.inspect(cid)["Mounts"][0]["Name"]
    assert ID_RE.match(name)
    assert volume_ls(vr) == [name]
    inspected = json.loads(vr.cli("volume", "inspect", name).stdout)[0]
    assert inspected["Labels"] == {"com.docker.volume.anonymous": ""}
    assert (volume_data(vr, name) / "f").read_text() == "x\n"
    vr.cli("rm", "-v", cid)
    assert volume_ls(vr) == []
    assert not volume_data(vr, name).parent.exists()
    # --rm removes its anonymous volume too, before `run` returns (as docker).
    run_rm(vr, "-v", "/scratch", "--", "sh", "-c", "echo y > /scratch/f")
    assert volume_ls(vr) == []
    # Without -v it stays (docker's default), and prune (anonymous only) takes it.
    cid = vr.track(vr.cli("create", "-v", "/scratch", vr.image).stdout.strip())
    vr.cli("rm", cid)
    assert len(volume_ls(vr)) == 1
    proc = vr.cli("volume", "prune", "-f")
    assert proc.stdout.startswith("Deleted Volumes:\n"), output(proc)
    assert volume_ls(vr) == []


def test_volume_commands_show_dockers_output(vr):
    vol = unique("cmd")
    assert vr.cli("volume", "create", vol).stdout == f"{vol}\n"
    assert vr.cli("volume", "create", vol).stdout == f"{vol}\n", "create of an existing volume must succeed"
    made = vr.cli("volume", "create").stdout.strip()
    assert ID_RE.match(made)
    ls = vr.cli("volume", "ls").stdout.splitlines()
    assert ls[0] == LS_HEADER
    assert sorted(ls[1:]) == sorted([f"local     {vol}", f"local     {made}"])
    assert sorted(volume_ls(vr)) == sorted([vol, made])
    [info] = json.loads(vr.cli("volume", "inspect", vol).stdout)
    assert set(info) == {"CreatedAt", "Driver", "Labels", "Mountpoint", "Name", "Options", "Scope"}
    assert info["Name"] == vol and info["Driver"] == "local" and info["Scope"] == "local"
    assert info["Mountpoint"] == str(volume_data(vr, vol))
    assert Path(info["Mountpoint"]).is_dir()
    assert TIMESTAMP_RE.match(info["CreatedAt"]), info
    assert vr.cli("volume", "inspect", "-f", "{{.Mountpoint}}", vol).stdout.strip() == info["Mountpoint"]
    missing = vr.cli("volume", "inspect", "nope-nope", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error response from daemon: get nope-nope: no such volume"
    assert vr.cli("volume", "rm", vol, made).stdout == f"{vol}\n{made}\n"
    assert volume_ls(vr) == []
    assert not volume_data(vr, vol).parent.exists()
    gone = vr.cli("volume", "rm", vol, check=False)
    assert gone.returncode == 1 and gone.stderr.strip() == f"Error response from daemon: get {vol}: no such volume"
    assert vr.cli("volume", "rm", "-f", vol).returncode == 0
    bad = vr.cli("volume", "create", "bad@name", check=False)
    assert bad.returncode == 1
    assert 'includes invalid characters for a local volume name' in bad.stderr, output(bad)


def test_volume_in_use_is_not_removed(vr):
    vol = unique("busy")
    cid = vr.track(vr.cli("create", "-v", f"{vol}:/data", vr.image).stdout.strip())
    (volume_data(vr, vol) / "f").write_text("still here\n")
    for flags in ([], ["-f"]):
        proc = vr.cli("volume", "rm", *flags, vol, check=False)
        assert proc.returncode == 1, output(proc)
        assert proc.stderr.strip() == f"Error response from daemon: remove {vol}: volume is in use - [{cid}]"
        assert vol in volume_ls(vr)
        assert (volume_data(vr, vol) / "f").read_text() == "still here\n"
    # prune -a leaves it too.
    vr.cli("volume", "prune", "-a", "-f")
    assert vol in volume_ls(vr)
    vr.cli("rm", cid)
    assert vr.cli("volume", "rm", vol).stdout == f"{vol}\n"


# =========================================================================== tmpfs, read-only


@BOTH_RUNTIMES
def test_tmpfs_mount_has_the_given_size_and_mode(vr):
    proc = run_rm(vr, "--tmpfs", "/scratch:size=2m,mode=1770", "--", "sh", "-c",
                  "cat /proc/mounts; stat -c %a /scratch; df -k /scratch; echo ok > /scratch/f && cat /scratch/f")  # fmt: skip
    line = mount_line(proc.stdout, "/scratch")
    assert line[2] == "tmpfs", line
    opts = line[3].split(",")
    for o in ("rw", "nosuid", "nodev", "noexec", "size=2048k", "mode=1770"):
        assert o in opts, line
    lines = proc.stdout.splitlines()
    assert "1770" in lines, output(proc)
    df = [line.split() for line in lines if line.endswith("/scratch")]
    assert df and df[0][1] == "2048", output(proc)
    assert lines[-1] == "ok"


@BOTH_RUNTIMES
def test_read_only_rootfs_keeps_tmpfs_volumes_and_dev_writable(vr):
    vol = unique("rw-under-ro")
    proc = run_rm(vr, "--read-only", "--tmpfs", "/tmp", "-v", f"{vol}:/data", "--", "sh", "-c",
                  "touch /x; touch /etc/x", check=False)  # fmt: skip
    assert proc.returncode != 0, output(proc)
    assert proc.stderr.count(EROFS) == 2, output(proc)
    proc = run_rm(vr, "--read-only", "--tmpfs", "/tmp", "-v", f"{vol}:/data", "--", "sh", "-c",
                  "touch /tmp/a && touch /data/b && touch /dev/shm/c && echo x > /dev/null && echo ok")  # fmt: skip
    assert proc.stdout == "ok\n", output(proc)
    assert vr.daemon.inspect(vr.cli("create", "--read-only", vr.image).stdout.strip())["HostConfig"]["ReadonlyRootfs"]


# =========================================================================== validation


def test_bad_mount_flags_are_refused_with_dockers_messages(vr, tmp_path):
    before = vr.cli("ps", "-a", "-q").stdout
    cases = {
        ("-v", f"{tmp_path}:rel"): f"invalid volume specification: '{tmp_path}:rel': invalid mount config for type \"bind\": invalid mount path: 'rel' mount path must be absolute",
        ("-v", "vol:/"): "invalid volume specification: 'vol:/': invalid mount config for type \"volume\": invalid specification: destination can't be '/'",
        ("-v", "bad@name:/d"): "create bad@name: \"bad@name\" includes invalid characters for a local volume name, only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host directory, use absolute path",
        ("-v", f"{tmp_path}:/d:bogus"): "invalid mode: bogus",
        ("--tmpfs", "rel"): "invalid mount path: 'rel' mount path must be absolute",
        ("--tmpfs", "/t:size=huge"): "invalid tmpfs option \"size=huge\"",
    }  # fmt: skip
    for flags, message in cases.items():
        for command in ("run", "create"):
            proc = vr.cli(command, *flags, vr.image, "true", check=False)
            assert proc.returncode == 125, output(proc)
            assert proc.stderr.strip() == f"Error response from daemon: {message}", output(proc)
    assert vr.cli("ps", "-a", "-q").stdout == before
    assert volume_ls(vr) == []


# =========================================================================== security


@BOTH_RUNTIMES
def test_symlinked_destinations_stay_inside_the_rootfs(vr, tmp_path):
    """An image whose mount destinations are symlinks to / and to ../../..:
    the mounts land inside the container's rootfs, never on the host, and the
    copy-up into a volume copies the image's files, not the host's."""
    tag = secrets.token_hex(4)
    repo = push_image(vr, unique("e2e/vol-evil"), symlink_entry("to-root", "/"),
                      symlink_entry("up", "../../../../../.."), symlink_entry("etc-link", "/etc"))  # fmt: skip
    vr.cli("pull", repo, timeout=120)
    host = tmp_path / "bind"
    host.mkdir()
    escape_root = Path("/") / f"wharf-escape-{tag}"
    escape_tmp = Path("/tmp") / f"wharf-escape-{tag}"
    vol = unique("evil")
    seeded = unique("evil-seed")
    proc = run_rm(vr, "-v", f"{host}:/to-root/wharf-escape-{tag}", "-v", f"{vol}:/up/tmp/wharf-escape-{tag}",
                  "-v", f"{seeded}:/etc-link", "--", "sh", "-c",
                  f"echo bind > /wharf-escape-{tag}/f && echo vol > /tmp/wharf-escape-{tag}/f && ls /etc",
                  image=repo)  # fmt: skip
    assert (host / "f").read_text() == "bind\n", output(proc)
    assert (volume_data(vr, vol) / "f").read_text() == "vol\n"
    assert not escape_root.exists(), f"{escape_root} was made on the host"
    assert not escape_tmp.exists(), f"{escape_tmp} was made on the host"
    # The copy-up followed etc-link inside the image: the image's passwd.
    seeded_passwd = (volume_data(vr, seeded) / "passwd").read_text()
    assert seeded_passwd.startswith("root:x:0:0:root:/root:/bin/sh\nnobody:"), seeded_passwd
    assert seeded_passwd != Path("/etc/passwd").read_text()
    # The image's /etc, plus the mount points of /etc/hosts & co. made in it.
    listed = set(os.listdir(volume_data(vr, seeded)))
    assert {"passwd", "group"} <= listed <= {"passwd", "group", "hostname", "hosts", "resolv.conf"}, listed


def test_mount_flag_binds_volumes_and_tmpfs(vr, tmp_path):
    (tmp_path / "f").write_text("host\n")
    vol = unique("mnt")
    proc = run_rm(vr, "--mount", f"type=bind,source={tmp_path},target=/b,readonly",
                  "--mount", f"source={vol},target=/v", "--mount", "type=tmpfs,target=/t,tmpfs-size=1048576",
                  "--", "sh", "-c", "cat /b/f; echo v > /v/f; cat /proc/mounts; echo x > /b/f", check=False)  # fmt: skip
    assert proc.returncode != 0 and EROFS in proc.stderr, output(proc)
    assert proc.stdout.startswith("host\n"), output(proc)
    assert "size=1024k" in mount_line(proc.stdout, "/t")[3].split(","), output(proc)
    assert (volume_data(vr, vol) / "f").read_text() == "v\n"
    missing = vr.cli("run", "--rm", "--mount", f"type=bind,source={tmp_path}/nope,target=/b", vr.image, "true",
                     check=False)  # fmt: skip
    assert missing.returncode == 125, output(missing)
    assert missing.stderr.strip() == (
        "Error response from daemon: invalid mount config for type \"bind\": "
        f"bind source path does not exist: {tmp_path}/nope"
    )
    assert not (tmp_path / "nope").exists()


def test_volume_ls_filters_dangling_name_and_label(vr):
    used, unused = unique("used"), unique("unused")
    vr.cli("volume", "create", "--label", "team=web", unused)
    cid = vr.track(vr.cli("create", "-v", f"{used}:/d", vr.image).stdout.strip())
    assert vr.cli("volume", "ls", "-q", "-f", "dangling=true").stdout.split() == [unused]
    assert vr.cli("volume", "ls", "-q", "--filter", "dangling=false").stdout.split() == [used]
    assert vr.cli("volume", "ls", "-q", "-f", "name=unus").stdout.split() == [unused]
    assert vr.cli("volume", "ls", "-q", "-f", "label=team=web").stdout.split() == [unused]
    bad = vr.cli("volume", "ls", "-f", "colour=red", check=False)
    assert bad.returncode == 1 and bad.stderr.strip() == "Error response from daemon: invalid filter 'colour'"
    vr.cli("rm", cid)


@BOTH_RUNTIMES
def test_read_only_bind_is_read_only_all_the_way_down(vr, tmp_path):
    """docker 25+: `-v SRC:DST:ro` also makes the mounts under SRC read-only."""
    host = tmp_path / "rro"
    (host / "sub").mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "wharf-e2e-rro", str(host / "sub")], check=True)
    try:
        proc = run_rm(vr, "-v", f"{host}:/d:ro", "--", "sh", "-c",
                      "ls /d/sub >/dev/null && echo x > /d/sub/f", check=False)  # fmt: skip
        assert proc.returncode != 0, output(proc)
        assert EROFS in proc.stderr, output(proc)
        assert not (host / "sub" / "f").exists()
        # Read-write binds keep the submount writable.
        run_rm(vr, "-v", f"{host}:/d", "--", "sh", "-c", "echo x > /d/sub/f")
        assert (host / "sub" / "f").read_text() == "x\n"
    finally:
        subprocess.run(["umount", "-l", str(host / "sub")], check=True)


@BOTH_RUNTIMES
def test_volume_over_etc_keeps_the_containers_hosts_and_hostname(vr):
    vol = unique("etc")
    proc = run_rm(vr, "-h", "vol-etc", "-v", f"{vol}:/etc", "--", "sh", "-c", "cat /etc/hostname; cat /etc/passwd")
    lines = proc.stdout.splitlines()
    assert lines[0] == "vol-etc", output(proc)
    assert lines[1].startswith("root:x:0:0:"), output(proc)


def test_volumes_and_their_users_survive_a_daemon_restart(runner_factory):
    r = runner_factory()
    r.cli("pull", r.image, timeout=120)
    vol = unique("kept")
    run_rm(r, "-v", f"{vol}:/data", "--", "sh", "-c", "echo before > /data/f")
    cid = r.track(r.cli("create", "-v", f"{vol}:/data", r.image, "cat", "/data/f").stdout.strip())
    r.daemon.restart()
    assert volume_ls(r) == [vol]
    proc = r.cli("volume", "rm", vol, check=False)
    assert proc.returncode == 1 and f"volume is in use - [{cid}]" in proc.stderr, output(proc)
    assert r.cli("start", "-a", cid).stdout == "before\n"
    r.cli("rm", cid)
    r.cli("volume", "rm", vol)
    assert volume_ls(r) == []
