"""wharf-runner `commit`, `tag` and `push`: the "pull, change, build, push"
loop without docker, and proof that what it pushes is a valid image (pulled
back by a fresh runner daemon, by docker and by skopeo)."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from clients import skopeo
from runner_support import busybox_image, output, wait_for, unique

BOTH_RUNTIMES = pytest.mark.parametrize("runner", ["wharf", "runc"], indirect=True)
IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
PUSHED_RE = re.compile(r"^(\S+): digest: (sha256:[0-9a-f]{64}) size: (\d+)$", re.M)


def commit(runner, *args) -> str:
    proc = runner.cli("commit", *args)
    image_id = proc.stdout.strip()
    assert IMAGE_ID_RE.match(image_id), f"commit did not print sha256:<id>\n{output(proc)}"
    return image_id


def run_out(runner, image: str, script: str) -> str:
    return runner.cli("run", "--rm", image, "sh", "-c", script).stdout


def image_inspect(runner, name: str) -> dict:
    return json.loads(runner.cli("image", "inspect", name).stdout)[0]


def make_committed(runner) -> tuple[str, str]:
    """A container that adds /new and /data/{a,b} and deletes /etc/group,
    committed as e2e/commit-*:1. Returns (reference, image id)."""
    name = unique("src")
    runner.cli(
        "run", "--name", name, runner.image, "sh", "-c",
        "echo committed > /new && mkdir /data && echo a > /data/a && echo b > /data/b && rm /etc/group",
    )
    runner.track(runner.fmt(name, "{{.Id}}"))
    ref = f"e2e/{unique('commit')}:1"
    image_id = commit(runner, "-m", "add /new", "-a", "e2e <e2e@example.com>", name, ref)
    runner.cli("rm", name)
    return ref, image_id


@BOTH_RUNTIMES
def test_commit_keeps_new_files_and_whiteouts(runner):
    ref, image_id = make_committed(runner)
    assert image_inspect(runner, ref)["Id"] == image_id
    out = run_out(runner, ref, "cat /new; ls /data; test -e /etc/group && echo group-still-there; cat /etc/passwd | head -1")
    assert out.splitlines() == ["committed", "a", "b", "root:x:0:0:root:/root:/bin/sh"], out

    # A second commit on top: a deleted and re-created dir becomes opaque,
    # so the lower layer's files in it stay hidden.
    name = unique("src2")
    runner.cli("run", "--name", name, ref, "sh", "-c", "rm -rf /data && mkdir /data && echo c > /data/c && rm /new")
    runner.track(runner.fmt(name, "{{.Id}}"))
    ref2 = f"{ref.split(':')[0]}:2"
    commit(runner, name, ref2)
    runner.cli("rm", name)
    out = run_out(runner, ref2, "ls /data; test -e /new && echo new-still-there; echo end")
    assert out.splitlines() == ["c", "end"], out


def test_commit_history_diff_ids_and_changes(runner):
    base = image_inspect(runner, runner.image)
    name = unique("src")
    runner.cli("run", "--name", name, "-e", "FROM_RUN=1", runner.image, "sh", "-c", "echo x > /x")
    runner.track(runner.fmt(name, "{{.Id}}"))
    ref = f"e2e/{unique('changes')}:1"
    image_id = commit(
        runner, "-m", "a message", "-a", "someone", "-c", "ENV GREETING=hello", "-c", "WORKDIR /srv",
        "-c", 'CMD ["sh", "-c", "echo $GREETING from $(pwd)"]', "-c", "LABEL stage=test", name, ref,
    )
    runner.cli("rm", name)
    info = image_inspect(runner, ref)
    assert info["Id"] == image_id
    assert info["Author"] == "someone"
    layers = info["RootFS"]["Layers"]
    assert layers[:-1] == base["RootFS"]["Layers"] and len(layers) == len(base["RootFS"]["Layers"]) + 1
    assert info["Config"]["WorkingDir"] == "/srv"
    assert "GREETING=hello" in info["Config"]["Env"] and "FROM_RUN=1" in info["Config"]["Env"]
    assert info["Config"]["Labels"] == {"stage": "test"}
    # The stored config's history has the commit's entry.
    root = runner.daemon.root
    config = json.loads((root / "blobs/sha256" / image_id.split(":")[1]).read_text())
    last = config["history"][-1]
    assert last["comment"] == "a message" and last["author"] == "someone", last
    assert last["created_by"] == "sh -c echo x > /x", last
    assert config["rootfs"]["diff_ids"] == layers
    # The CMD change runs.
    assert runner.cli("run", "--rm", ref).stdout == "hello from /srv\n"


def test_commit_of_a_running_container_and_errors(runner):
    name = unique("live")
    runner.track(runner.cli("run", "-d", "--name", name, runner.image, "sh", "-c", "echo live > /live; sleep 300").stdout.strip())
    ref = f"e2e/{unique('live')}:1"
    # The write may race the commit: wait until the file is in the upper dir.
    upper = runner.daemon.root / "containers" / runner.fmt(name, "{{.Id}}") / "upper" / "live"
    wait_for(lambda: upper.is_file() and upper.read_text() == "live\n", 10, "/live in the upper dir")
    commit(runner, name, ref)
    assert run_out(runner, ref, "cat /live") == "live\n"
    bad = runner.cli("commit", "-c", "RUN rm -rf /", name, check=False)
    assert bad.returncode == 1, output(bad)
    assert bad.stderr.startswith("Error response from daemon: RUN is not a valid change command"), output(bad)
    runner.cli("rm", "-f", name)

    missing = runner.cli("commit", "no-such-container", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "Error response from daemon: No such container: no-such-container", output(missing)


def push(runner_env, ref: str, check: bool = True):
    return runner_env.cli("push", ref, check=check, timeout=120)


@BOTH_RUNTIMES
def test_push_then_pull_back_with_a_fresh_daemon_docker_and_skopeo(runner, runner_factory, docker):
    ref, image_id = make_committed(runner)
    proc = push(runner, ref)
    host = runner.wharf.docker_host
    repo = ref.split(":")[0]
    lines = proc.stdout.splitlines()
    assert lines[0] == f"The push refers to repository [{host}/{repo}]", proc.stdout
    assert [line for line in lines if line.endswith(": Pushed")], proc.stdout
    match = PUSHED_RE.search(proc.stdout)
    assert match and match.group(1) == "1", proc.stdout
    digest = match.group(2)
    # The repo digest is recorded, as docker does.
    assert f"{host}/{repo}@{digest}" in image_inspect(runner, ref)["RepoDigests"]

    # A second push: every layer is there already.
    again = push(runner, ref)
    layer_lines = [line for line in again.stdout.splitlines()[1:] if not PUSHED_RE.match(line)]
    assert layer_lines and all(line.endswith(("Layer already exists", "Preparing")) for line in layer_lines), again.stdout
    assert PUSHED_RE.search(again.stdout).group(2) == digest

    # A fresh daemon pulls it and sees the changes.
    other = runner_factory()
    other.cli("pull", ref, timeout=120)
    assert image_inspect(other, ref)["Id"] == image_id
    assert run_out(other, ref, "cat /new; test -e /etc/group || echo no-group") == "committed\nno-group\n"

    # docker pulls and runs it.
    full = f"{host}/{ref}"
    docker_digest = docker.pull(full)
    try:
        assert docker_digest == digest
        out = docker("run", "--rm", full, "sh", "-c", "cat /new; ls /data; test -e /etc/group || echo no-group").stdout
        assert out == "committed\na\nb\nno-group\n", out
    finally:
        docker("rmi", "-f", full, check=False)

    # skopeo copies it (verifying every blob's digest).
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is not installed: scripts/test installs it")
    dest = runner.daemon.root.parent / unique("skopeo")
    try:
        skopeo("copy", "--src-tls-verify=false", f"docker://{full}", f"dir:{dest}")
        assert (dest / "manifest.json").is_file()
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_tag_then_push_under_another_name(runner):
    target = f"e2e/{unique('tagged')}:v1"
    runner.cli("tag", runner.image, target)
    assert image_inspect(runner, target)["Id"] == image_inspect(runner, runner.image)["Id"]
    proc = push(runner, target)
    # The busybox layer is uploaded again into the new repository (no
    # cross-repository mount), then the tag points at the same manifest.
    match = PUSHED_RE.search(proc.stdout)
    assert match and match.group(1) == "v1", proc.stdout
    api = runner.wharf.api()
    resp = api.request("HEAD", f"/v2/{target.split(':')[0]}/manifests/v1")
    assert resp.status_code == 200 and resp.headers["Docker-Content-Digest"] == match.group(2)

    missing = runner.cli("push", "e2e/never-made:1", check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "An image does not exist locally with the tag: e2e/never-made:1", output(missing)
    bad_tag = runner.cli("tag", "no-such-image", "e2e/x:1", check=False)
    assert bad_tag.returncode == 1
    assert bad_tag.stderr.strip() == "Error response from daemon: No such image: no-such-image", output(bad_tag)


def test_push_to_an_auth_registry_needs_credentials(runner_factory, wharf_auth):
    env = runner_factory(wharf_auth, api=wharf_auth.api("alice"))
    image = busybox_image()
    env.push("team/base", image, "1")
    host = wharf_auth.docker_host
    env.cli("login", "-u", "alice", "--password-stdin", host, input=wharf_auth.users["alice"] + "\n")
    env.cli("pull", "team/base:1", timeout=120)
    env.cli("logout", host)

    name = unique("src")
    env.cli("run", "--name", name, "team/base:1", "sh", "-c", "echo private > /private")
    env.track(env.daemon.fmt(name, "{{.Id}}"))
    commit(env, name, "team/app:1")
    env.cli("rm", name)

    denied = env.cli("push", "team/app:1", check=False, timeout=120)
    assert denied.returncode == 1, output(denied)
    errors = [line for line in denied.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, output(denied)
    assert errors[0].endswith("requires authentication and no credentials are stored for it (log in first)"), output(denied)

    # bob may only pull team/*: refused with the registry's reason.
    env.cli("login", "-u", "bob", "--password-stdin", host, input=wharf_auth.users["bob"] + "\n")
    bob = env.cli("push", "team/app:1", check=False, timeout=120)
    assert bob.returncode == 1, output(bob)
    assert [line for line in bob.stderr.splitlines() if line.strip()][0].startswith("denied:"), output(bob)

    env.cli("login", "-u", "alice", "--password-stdin", host, input=wharf_auth.users["alice"] + "\n")
    ok = env.cli("push", "team/app:1", timeout=120)
    assert PUSHED_RE.search(ok.stdout), ok.stdout
    # The base layer was in team/base, not team/app: uploaded; the new one too.
    assert ok.stdout.count(": Pushed") == 2, ok.stdout

    fresh = runner_factory(wharf_auth)
    fresh.cli("login", "-u", "alice", "--password-stdin", host, input=wharf_auth.users["alice"] + "\n")
    assert fresh.cli("run", "--rm", "team/app:1", "cat", "/private").stdout == "private\n"
