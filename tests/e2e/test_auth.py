"""Auth through the real clients: docker login/logout, skopeo --creds, podman
login and oras-py against a wharf-server with auth on, plus the admin CLI that
manages users, grants, public repositories and robots.

Every test gets its own server (users made by the CLI, see the `wharf_auth`
fixture) and its own DOCKER_CONFIG per user (`docker_config`), so no login
leaks between tests. After each test the fixtures fail it if the server log
contains any password or secret used (or its Basic-auth encoding)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import types
from pathlib import Path

import oras.client
import oras.decorator
import pytest
import requests

from clients import BIG_LAYER_BYTES, BIG_LAYERS, PUSH_DIGEST_RE, skopeo
from support import (
    AUTH_ENV,
    ThrottledProxy,
    assert_image_in_registry,
    describe,
    error_codes,
    new_password,
    run,
    server_binary,
    sha256_digest,
)

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")
DENIED_MESSAGE = "requested access to the resource is denied"


def output(proc) -> str:
    return proc.stdout + proc.stderr


def push_busybox(d, images, docker_refs, ref: str) -> str:
    """`docker push` of the busybox test image as `ref` with the CLI `d`; returns the digest."""
    docker_refs.tag(images.ensure(images.busybox), ref)
    digest, _ = d.push(ref)
    return digest


def assert_no_image(api, repo: str, digest: str | None = None, tag: str | None = None) -> None:
    """Seen by `api` (an admin): `repo` has no tag, and neither `tag` nor `digest` is a manifest."""
    resp = api.request("GET", f"/v2/{repo}/tags/list")
    if resp.status_code == 404:
        assert error_codes(resp) == ["NAME_UNKNOWN"], describe(resp)
    else:
        assert resp.status_code == 200 and not resp.json().get("tags"), describe(resp)
    for ref in (digest, tag):
        if ref:
            resp = api.get_manifest(repo, ref)
            assert resp.status_code == 404, describe(resp)
            assert error_codes(resp) == ["MANIFEST_UNKNOWN"], describe(resp)


def catalog(api) -> list[str]:
    resp = api.request("GET", "/v2/_catalog")
    assert resp.status_code == 200, describe(resp)
    return resp.json()["repositories"]


def jwt_claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# --- startup and the admin CLI ----------------------------------------------------------


@pytest.mark.parametrize("how", ["env", "config", "empty-admin-password"])
def test_auth_without_users_refuses_to_start(tmp_path, how):
    """Auth on and nobody able to log in: the server exits non-zero and says how to fix it."""
    env = {"NO_COLOR": "1"}
    cmd = [server_binary()]
    if how == "config":
        config = tmp_path / "server.toml"
        config.write_text("[auth]\nenabled = true\n")
        cmd += ["--config", config]
    else:
        env["WHARF_AUTH_ENABLED"] = "true"
    if how == "empty-admin-password":
        env["WHARF_ADMIN_PASSWORD"] = ""
    cmd += ["serve", "--listen", "127.0.0.1:0", "--data-dir", tmp_path / "data"]
    full_env = {k: v for k, v in os.environ.items() if k != "WHARF_ADMIN_PASSWORD"}
    try:
        proc = run(cmd, check=False, timeout=30, env={**full_env, **env})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the server started (still running after 30 s):\n{exc.stderr}")
    assert proc.returncode != 0, output(proc)
    assert "user add" in proc.stderr and "WHARF_ADMIN_PASSWORD" in proc.stderr, output(proc)
    assert "panicked" not in output(proc)


def test_admin_password_env_creates_admin(wharf_factory):
    """WHARF_ADMIN_PASSWORD on the first start creates `admin`, who can then log in
    (also after a restart without the variable)."""
    password = new_password("admin")
    server = wharf_factory("wharf-first", env={**AUTH_ENV, "WHARF_ADMIN_PASSWORD": password})
    server.secrets.append(password)
    server.users["admin"] = password
    server.start()
    assert catalog(server.api("admin")) == []
    listed = server.cli("user", "list").stdout
    assert re.search(r"^admin\tadmin\b", listed, re.M), listed

    server.stop()
    del server.env["WHARF_ADMIN_PASSWORD"]
    server.start()
    resp = requests.get(f"{server.url}/token", params={"service": "wharf-registry"}, auth=("admin", password))
    assert resp.status_code == 200, describe(resp)
    resp = requests.get(f"{server.url}/token", params={"service": "wharf-registry"}, auth=("admin", "wrong"))
    assert resp.status_code == 401, describe(resp)


def test_cli_errors_are_clear(wharf_auth):
    """Mistakes with the admin CLI (run while the server serves) fail with a non-zero
    exit and one clear line; nothing changes."""
    before = wharf_auth.cli("user", "list").stdout

    def fails(*args, input=None, expect: str):
        proc = wharf_auth.cli(*args, input=input, check=False)
        assert proc.returncode != 0, f"{args} succeeded:\n{output(proc)}"
        assert expect in proc.stderr, f"{args}: {expect!r} not in:\n{output(proc)}"
        assert "panicked" not in proc.stderr and "backtrace" not in proc.stderr.lower(), proc.stderr
        return proc

    proc = fails(
        "user", "add", "alice", "--password-stdin", input="another-password\n", expect="already exists"
    )
    assert 'user "alice" already exists' in proc.stderr, proc.stderr
    fails("user", "add", "admin", "--admin", "--password-stdin", input="x\n", expect="already exists")
    proc = fails("grant", "alice", "team/*", "pull,write", expect="invalid actions")
    assert "pull, push, delete" in proc.stderr, proc.stderr
    fails("grant", "alice", "team/*", "", expect="invalid actions")
    fails("grant", "alice", "team/*", "admin", expect="invalid actions")
    fails("grant", "nobody", "team/*", "pull", expect='no user "nobody"')
    fails("grant", "alice", "Team/*", "pull", expect="invalid repository pattern")
    fails("revoke", "alice", "other/*", expect="no grant")
    fails("user", "remove", "nobody", expect='no user "nobody"')
    fails("user", "add", "carol", "--password-stdin", input="\n", expect="no password")
    fails("user", "add", "bad:name", "--password-stdin", input="pw\n", expect="invalid user name")
    fails("public", "pub/*", "maybe", expect="invalid value")
    assert wharf_auth.cli("user", "list").stdout == before

    # The grants that exist still work: alice may push, bob may only pull.
    alice = jwt_claims(wharf_auth.api("alice").token("repository:team/x:pull,push"))
    assert alice["access"] == [{"type": "repository", "name": "team/x", "actions": ["pull", "push"]}]
    bob = jwt_claims(wharf_auth.api("bob").token("repository:team/x:pull,push"))
    assert bob["access"] == [{"type": "repository", "name": "team/x", "actions": ["pull"]}]


# --- docker -------------------------------------------------------------------------------


def test_docker_login_push_pull_logout(wharf_auth, docker, docker_config, images, docker_refs):
    alice = docker_config("alice")
    password = wharf_auth.users["alice"]
    out = output(alice.login(wharf_auth.docker_host, "alice", password))
    assert "Login Succeeded" in out, out
    # docker keeps the refresh token from POST /token, not the password.
    config = (Path(alice.env["DOCKER_CONFIG"]) / "config.json").read_text()
    entry = json.loads(config)["auths"][wharf_auth.docker_host]
    assert entry.get("identitytoken"), config
    assert password not in config
    assert base64.b64encode(f"alice:{password}".encode()).decode() not in config

    ref = f"{wharf_auth.docker_host}/team/app:1"
    digest = push_busybox(alice, images, docker_refs, ref)
    assert_image_in_registry(wharf_auth.api("admin"), "team/app", "1", digest)

    docker.remove_image(images.busybox.image_id)
    assert alice.pull(ref) == digest
    pulled = docker.inspect(ref)
    assert pulled["Id"] == images.busybox.image_id
    assert f"{wharf_auth.docker_host}/team/app@{digest}" in pulled["RepoDigests"]

    alice.logout(wharf_auth.docker_host)
    docker.remove_image(images.busybox.image_id)
    proc = alice("pull", ref, check=False)
    assert proc.returncode != 0, output(proc)
    assert "denied" in output(proc) or "unauthorized" in output(proc), output(proc)
    assert docker.image_id(ref) is None


def test_pull_only_user_push_is_denied(wharf_auth, docker, docker_config, images, docker_refs):
    """bob may pull team/*, not push: docker says "denied" and nothing is stored."""
    admin_api = wharf_auth.api("admin")
    admin = docker_config("admin")
    admin.login(wharf_auth.docker_host, "admin", wharf_auth.users["admin"])
    pushed = push_busybox(admin, images, docker_refs, f"{wharf_auth.docker_host}/team/app:1")

    bob = docker_config("bob")
    bob.login(wharf_auth.docker_host, "bob", wharf_auth.users["bob"])
    assert bob.pull(f"{wharf_auth.docker_host}/team/app:1") == pushed

    # A new repository: the blob upload is refused.
    ref = docker_refs.tag(images.ensure(images.busybox), f"{wharf_auth.docker_host}/team/denied:1")
    started = time.monotonic()
    proc = bob("push", ref, check=False)
    new_repo_secs = time.monotonic() - started
    new_repo_out = output(proc)
    assert proc.returncode != 0, new_repo_out
    assert "denied" in new_repo_out, new_repo_out
    layers = assert_image_in_registry(admin_api, "team/app", "1", pushed)["layers"]
    assert_no_image(admin_api, "team/denied", digest=pushed, tag="1")
    for layer in layers:
        resp = admin_api.get_blob("team/denied", layer["digest"])
        assert resp.status_code == 404, describe(resp)

    # An existing repository (docker finds the layers there): the manifest PUT is refused.
    ref = docker_refs.tag(images.ensure(images.busybox), f"{wharf_auth.docker_host}/team/app:bob")
    proc = bob("push", ref, check=False)
    assert proc.returncode != 0, output(proc)
    assert "denied" in output(proc), output(proc)
    assert admin_api.tags("team/app") == ["1"]
    assert catalog(admin_api) == ["team/app"]

    # What docker saw: a token with only pull, then 403 DENIED.
    token = wharf_auth.api("bob").token("repository:team/denied:pull,push")
    assert jwt_claims(token)["access"] == [{"type": "repository", "name": "team/denied", "actions": ["pull"]}]
    resp = requests.post(
        f"{wharf_auth.url}/v2/team/denied/blobs/uploads/", headers={"Authorization": f"Bearer {token}"}
    )
    assert resp.status_code == 403, describe(resp)
    assert error_codes(resp) == ["DENIED"], describe(resp)
    assert resp.json()["errors"][0]["message"] == DENIED_MESSAGE, describe(resp)
    assert_no_image(admin_api, "team/denied")

    # The DENIED error carries a detail, so docker reports it at once
    # (a bare "denied" would be retried for ~50 s).
    assert "Retrying in" not in new_repo_out, new_repo_out
    assert f"denied: {DENIED_MESSAGE}" in new_repo_out, new_repo_out


def test_anonymous_pull_of_public_repository(wharf_auth, docker, docker_config, images, docker_refs):
    admin = docker_config("admin")
    admin.login(wharf_auth.docker_host, "admin", wharf_auth.users["admin"])
    public_ref = f"{wharf_auth.docker_host}/pub/bb:1"
    private_ref = f"{wharf_auth.docker_host}/team/bb:1"
    digest = push_busybox(admin, images, docker_refs, public_ref)
    assert push_busybox(admin, images, docker_refs, private_ref) == digest
    wharf_auth.public("pub/*", on=True)  # while the server runs

    anon = docker_config("anonymous")
    docker.remove_image(images.busybox.image_id)
    assert anon.pull(docker_refs.track(public_ref)) == digest
    assert docker.inspect(public_ref)["Id"] == images.busybox.image_id

    proc = anon("pull", docker_refs.track(private_ref), check=False)
    assert proc.returncode != 0, output(proc)
    assert "pull access denied" in output(proc), output(proc)
    assert docker.image_id(private_ref) is None

    # Public means pull only: an anonymous push is refused and stores nothing.
    ref = docker_refs.tag(images.ensure(images.busybox), f"{wharf_auth.docker_host}/pub/bb:anon")
    proc = anon("push", ref, check=False)
    assert proc.returncode != 0, output(proc)
    admin_api = wharf_auth.api("admin")
    assert admin_api.tags("pub/bb") == ["1"]

    # The anonymous catalog lists the public repository only.
    assert catalog(wharf_auth.api(anonymous=True)) == ["pub/bb"]
    assert catalog(admin_api) == ["pub/bb", "team/bb"]

    wharf_auth.public("pub/*", on=False)
    docker.remove_image(images.busybox.image_id)
    proc = anon("pull", public_ref, check=False)
    assert proc.returncode != 0, output(proc)


def test_robot_pulls_its_pattern_and_cannot_push(wharf_auth, docker, docker_config, images, docker_refs):
    proc = wharf_auth.add_robot("ci-node", "team/*")
    secret = proc.stdout.strip()
    assert proc.stdout == secret + "\n", f"stdout must be the secret alone:\n{proc.stdout!r}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{32,}", secret), secret
    assert "shown once" in proc.stderr and secret not in proc.stderr, proc.stderr
    listed = wharf_auth.cli("user", "list").stdout
    assert re.search(r"^ci-node\trobot\tteam/\*=pull$", listed, re.M), listed
    assert secret not in listed
    again = wharf_auth.cli("robot", "add", "ci-node", "--pull", "team/*", check=False)
    assert again.returncode != 0 and "already exists" in again.stderr, output(again)
    assert again.stdout == "", "a second `robot add` must not print a (new) secret"

    admin = docker_config("admin")
    admin.login(wharf_auth.docker_host, "admin", wharf_auth.users["admin"])
    digest = push_busybox(admin, images, docker_refs, f"{wharf_auth.docker_host}/team/app:1")
    push_busybox(admin, images, docker_refs, f"{wharf_auth.docker_host}/other/app:1")

    robot = docker_config("robot")
    assert "Login Succeeded" in output(robot.login(wharf_auth.docker_host, "ci-node", secret))
    docker.remove_image(images.busybox.image_id)
    assert robot.pull(f"{wharf_auth.docker_host}/team/app:1") == digest

    proc = robot("pull", f"{wharf_auth.docker_host}/other/app:1", check=False)
    assert proc.returncode != 0, output(proc)

    ref = docker_refs.tag(images.ensure(images.busybox), f"{wharf_auth.docker_host}/team/app:robot")
    proc = robot("push", ref, check=False)
    assert proc.returncode != 0, output(proc)
    assert "denied" in output(proc), output(proc)
    assert wharf_auth.api("admin").tags("team/app") == ["1"]
    assert catalog(wharf_auth.api("ci-node")) == ["team/app"]


def test_user_remove_revokes_docker_login(wharf_auth, docker, docker_config, images, docker_refs):
    """`user remove` (while the server runs) ends a user's docker login."""
    admin = docker_config("admin")
    admin.login(wharf_auth.docker_host, "admin", wharf_auth.users["admin"])
    ref = f"{wharf_auth.docker_host}/team/app:1"
    digest = push_busybox(admin, images, docker_refs, ref)
    bob = docker_config("bob")
    bob.login(wharf_auth.docker_host, "bob", wharf_auth.users["bob"])
    docker.remove_image(images.busybox.image_id)
    assert bob.pull(ref) == digest

    assert "removed user bob" in wharf_auth.cli("user", "remove", "bob").stdout
    assert not re.search(r"^bob\t", wharf_auth.cli("user", "list").stdout, re.M)
    docker.remove_image(images.busybox.image_id)
    proc = bob("pull", ref, check=False)
    assert proc.returncode != 0, f"a removed user still pulls:\n{output(proc)}"
    proc = bob.login(wharf_auth.docker_host, "bob", wharf_auth.users["bob"], check=False)
    assert proc.returncode != 0, output(proc)


def test_password_change_revokes_docker_login(wharf_auth, docker, docker_config, images, docker_refs):
    """docker keeps a refresh token; `user passwd` revokes it, the new password works."""
    alice = docker_config("alice")
    alice.login(wharf_auth.docker_host, "alice", wharf_auth.users["alice"])
    ref = f"{wharf_auth.docker_host}/team/app:1"
    digest = push_busybox(alice, images, docker_refs, ref)

    old, new = wharf_auth.users["alice"], new_password("alice-new")
    wharf_auth.secrets.append(new)
    wharf_auth.cli("user", "passwd", "alice", "--password-stdin", input=new + "\n")
    wharf_auth.users["alice"] = new

    docker.remove_image(images.busybox.image_id)
    proc = alice("pull", ref, check=False)
    assert proc.returncode != 0, f"the refresh token still works after the password change:\n{output(proc)}"
    proc = alice.login(wharf_auth.docker_host, "alice", old, check=False)
    assert proc.returncode != 0, output(proc)
    alice.login(wharf_auth.docker_host, "alice", new)
    assert alice.pull(ref) == digest


TOKEN_TTL = 3
LEEWAY = 60  # the server's default leeway_secs
PUSH_SECS = 75  # longer than a token is accepted (TOKEN_TTL + LEEWAY), and than docker caches one (60 s)


def test_short_token_ttl_long_docker_push(wharf_factory, docker, docker_config, images, docker_refs):
    """With 3 s tokens (set in a config file), a > 200 MB multi-layer docker push
    throttled to last ~75 s, well past the life of its first token, still succeeds:
    docker fetches a fresh token mid-push and no request is refused."""
    server = wharf_factory(
        "wharf-ttl",
        env={"WHARF_LOG": "debug,sqlx=info"},
        config=f"[auth]\nenabled = true\ntoken_ttl_secs = {TOKEN_TTL}\n",
    )
    server.add_user("admin", admin=True)
    server.add_user("alice")
    server.grant("alice", "team/*", "pull,push")
    server.start()
    resp = requests.get(
        f"{server.url}/token",
        params={"service": "wharf-registry", "scope": "repository:team/big:pull"},
        auth=("alice", server.users["alice"]),
    )
    assert resp.status_code == 200 and resp.json()["expires_in"] == TOKEN_TTL, describe(resp)

    src = images.ensure(images.big)
    rate = BIG_LAYERS * BIG_LAYER_BYTES / PUSH_SECS
    with ThrottledProxy(server.host, rate) as proxy:
        alice = docker_config("alice")
        alice.login(proxy.host, "alice", server.users["alice"])
        ref = docker_refs.tag(src, f"{proxy.host}/team/big:1")
        log_offset = len(server.log_path.read_text(errors="replace"))
        started = time.monotonic()
        proc = alice("push", ref, check=False)
        elapsed = time.monotonic() - started
        log = server.log_path.read_text(errors="replace")
        refused = [line for line in log.splitlines() if "refused a token" in line or "status=401" in line]
        assert proc.returncode == 0, (
            f"docker push failed after {elapsed:.1f} s\n--- docker ---\n{output(proc)}\n"
            f"--- server: 401s and refused tokens ---\n" + "\n".join(refused[-50:])
        )
        assert elapsed > TOKEN_TTL + LEEWAY, f"the push took only {elapsed:.1f} s: not a test of expiry"
        assert not [line for line in refused if "refused a token" in line], "\n".join(refused)
        # one token when the push starts, at least one more once docker's copy is 60 s old
        token_requests = re.findall(r"method=(?:GET|POST) path=/token status=200", log[log_offset:])
        assert len(token_requests) >= 2, f"docker did not fetch a fresh token mid-push: {token_requests}"

        digest = PUSH_DIGEST_RE.search(proc.stdout).group(1)
        manifest = assert_image_in_registry(server.api("admin"), "team/big", "1", digest)
        assert len(manifest["layers"]) >= 6
        docker.remove_image(images.big.image_id)
        assert alice.pull(ref) == digest
        assert docker.inspect(ref)["Id"] == images.big.image_id


# --- skopeo, podman, oras-py ---------------------------------------------------------------


def test_skopeo_with_creds(wharf_auth, images, tmp_path):
    host = wharf_auth.host
    env = {"REGISTRY_AUTH_FILE": str(tmp_path / "skopeo-auth.json")}  # no stored logins
    alice = f"alice:{wharf_auth.users['alice']}"
    bob = f"bob:{wharf_auth.users['bob']}"
    src = f"docker-daemon:{images.ensure(images.busybox)}"

    skopeo("copy", *NO_TLS, "--dest-creds", alice, src, f"docker://{host}/team/sk:1", env=env)
    api = wharf_auth.api("admin")
    digest = api.manifest_digest("team/sk", "1")
    assert_image_in_registry(api, "team/sk", "1", digest)

    info = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", alice, f"docker://{host}/team/sk:1",
                             env=env).stdout)  # fmt: skip
    assert info["Digest"] == digest
    raw = skopeo(
        "inspect", "--tls-verify=false", "--raw", "--creds", bob, f"docker://{host}/team/sk:1", env=env
    )
    assert sha256_digest(raw.stdout.encode()) == digest

    # registry to registry inside wharf, pulling and pushing with credentials
    skopeo("copy", *NO_TLS, "--src-creds", bob, "--dest-creds", alice,
           f"docker://{host}/team/sk:1", f"docker://{host}/team/sk:2", env=env)  # fmt: skip
    assert api.manifest_digest("team/sk", "2") == digest

    anon = skopeo("inspect", "--tls-verify=false", f"docker://{host}/team/sk:1", env=env, check=False)
    assert anon.returncode != 0, output(anon)
    wrong = skopeo("inspect", "--tls-verify=false", "--creds", "alice:wrong-password",
                   f"docker://{host}/team/sk:1", env=env, check=False)  # fmt: skip
    assert wrong.returncode != 0, output(wrong)
    denied = skopeo("copy", *NO_TLS, "--dest-creds", bob, src, f"docker://{host}/team/sk:bob", env=env,
                    check=False)  # fmt: skip
    assert denied.returncode != 0, output(denied)
    assert sorted(api.tags("team/sk")) == ["1", "2"]

    # Deleting needs the delete action, which alice gets only with a new grant.
    delete = ("delete", "--tls-verify=false", "--creds", alice, f"docker://{host}/team/sk:2")
    denied = skopeo(*delete, env=env, check=False)
    assert denied.returncode != 0, output(denied)
    assert api.manifest_digest("team/sk", "2") == digest
    wharf_auth.grant("alice", "team/*", "pull,push,delete")
    skopeo(*delete, env=env)
    resp = api.get_manifest("team/sk", digest)
    assert resp.status_code == 404, describe(resp)


def test_podman_login_push_pull(wharf_auth, images, podman, tmp_path):
    host = wharf_auth.host
    pusher = podman()
    pusher("load", "-i", images.busybox.archive)
    image_id = images.busybox.image_id.removeprefix("sha256:")
    out = pusher("login", "--tls-verify=false", "-u", "alice", "--password-stdin", host,
                 input=wharf_auth.users["alice"] + "\n").stdout  # fmt: skip
    assert "Login Succeeded" in out, out
    ref = f"{host}/team/podman:1"
    digest_file = tmp_path / "digest"
    pusher("push", "--tls-verify=false", "--digestfile", digest_file, image_id, f"docker://{ref}")
    digest = digest_file.read_text().strip()
    assert_image_in_registry(wharf_auth.api("admin"), "team/podman", "1", digest)

    puller = podman()
    proc = puller("pull", "--tls-verify=false", ref, check=False)
    assert proc.returncode != 0, f"anonymous podman pull of a private repository worked:\n{output(proc)}"
    puller("login", "--tls-verify=false", "-u", "bob", "--password-stdin", host,
           input=wharf_auth.users["bob"] + "\n")  # fmt: skip
    puller("pull", "--tls-verify=false", ref)
    assert puller("image", "inspect", "--format", "{{.Digest}}", ref).stdout.strip() == digest
    assert puller.image_id(ref) == image_id
    proc = puller("push", "--tls-verify=false", image_id, f"docker://{host}/team/podman:bob", check=False)
    assert proc.returncode != 0, output(proc)
    puller("logout", host)
    assert wharf_auth.api("admin").tags("team/podman") == ["1"]


def oras_client(server, user: str, tmp_path: Path) -> oras.client.OrasClient:
    client = oras.client.OrasClient(hostname=server.host, insecure=True)
    # config_path keeps oras-py from writing the login to ~/.docker/config.json
    result = client.login(username=user, password=server.users[user], hostname=server.host,
                          config_path=str(tmp_path / f"oras-{user}.json"))  # fmt: skip
    assert result.get("Status") == "Login Succeeded", result
    return client


def test_oras_pull_with_credentials(wharf_auth, tmp_path):
    """oras-py with a login pulls a private artifact (its token flow: 401 challenge,
    GET /token with Basic, retry); without one it cannot."""
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(b"wharf auth e2e\n" * 100_000)
    target = f"{wharf_auth.host}/team/artifact:v1"

    # Push with a token that already has push (oras-py's own push flow is the next test).
    pusher = oras.client.OrasClient(hostname=wharf_auth.host, insecure=True)
    pusher.auth.set_token_auth(wharf_auth.api("alice").token("repository:team/artifact:pull,push"))
    resp = pusher.push(target=target, files=[str(src)], disable_path_validation=True, quiet=True)
    assert resp.status_code == 201, describe(resp)

    client = oras_client(wharf_auth, "bob", tmp_path)
    files = client.pull(target=target, outdir=str(tmp_path / "out"))
    assert [Path(f).name for f in files] == ["payload.bin"]
    assert (tmp_path / "out" / "payload.bin").read_bytes() == src.read_bytes()

    anonymous = oras.client.OrasClient(hostname=wharf_auth.host, insecure=True)
    with pytest.raises(Exception):
        anonymous.pull(target=target, outdir=str(tmp_path / "anon"))
    assert not (tmp_path / "anon" / "payload.bin").exists()


def test_oras_push_with_credentials(wharf_auth, tmp_path, monkeypatch):
    # oras-py retries a failing upload 5 times with 3..83 s sleeps; the outcome is the same.
    monkeypatch.setattr(oras.decorator, "time", types.SimpleNamespace(sleep=lambda _: None))
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(b"pushed by oras-py with a login\n" * 50_000)
    target = f"{wharf_auth.host}/team/oras:v1"

    client = oras_client(wharf_auth, "alice", tmp_path)
    resp = client.push(target=target, files=[str(src)], disable_path_validation=True, quiet=True)
    assert resp.status_code == 201, describe(resp)
    manifest, _, _ = wharf_auth.api("admin").manifest_json("team/oras", "v1")
    assert manifest["layers"][0]["digest"] == sha256_digest(src.read_bytes())

    files = oras_client(wharf_auth, "bob", tmp_path).pull(target=target, outdir=str(tmp_path / "out"))
    assert (tmp_path / "out" / "payload.bin").read_bytes() == src.read_bytes()
    assert [Path(f).name for f in files] == ["payload.bin"]


# --- secrets ------------------------------------------------------------------------------


def test_server_log_never_contains_passwords(wharf_factory, docker_config):
    """Logins that work and logins that fail, by docker and by hand (GET and POST
    /token, refresh), with the most verbose log: no password, no Basic
    credentials and no token ever appear in it."""
    server = wharf_factory("wharf-log", env={"WHARF_AUTH_ENABLED": "true", "WHARF_LOG": "trace"})
    server.add_user("admin", admin=True)
    server.add_user("alice")
    server.grant("alice", "team/*", "pull,push")
    server.start()
    wrong = new_password("wrong")
    server.secrets.append(wrong)
    alice_pw = server.users["alice"]

    d = docker_config("alice")
    assert d.login(server.docker_host, "alice", wrong, check=False).returncode != 0
    d.login(server.docker_host, "alice", alice_pw)
    identity = json.loads((Path(d.env["DOCKER_CONFIG"]) / "config.json").read_text())["auths"][
        server.docker_host
    ]["identitytoken"]

    base = f"{server.url}/token"
    scope = "repository:team/app:pull,push"
    resp = requests.get(base, params={"service": "wharf-registry", "scope": scope}, auth=("alice", alice_pw))
    assert resp.status_code == 200, describe(resp)
    access = resp.json()["token"]
    resp = requests.get(base, params={"service": "wharf-registry", "scope": scope}, auth=("nobody", wrong))
    assert resp.status_code == 401, describe(resp)
    form = {"grant_type": "password", "service": "wharf-registry", "client_id": "e2e", "access_type": "offline",
            "username": "alice", "password": alice_pw, "scope": scope}  # fmt: skip
    resp = requests.post(base, data=form)
    assert resp.status_code == 200 and resp.json().get("refresh_token"), describe(resp)
    refresh = resp.json()["refresh_token"]
    resp = requests.post(base, data={"grant_type": "refresh_token", "service": "wharf-registry",
                                     "client_id": "e2e", "refresh_token": refresh, "scope": scope})  # fmt: skip
    assert resp.status_code == 200, describe(resp)
    resp = requests.get(f"{server.url}/v2/team/app/tags/list", headers={"Authorization": f"Bearer {access}"})
    assert resp.status_code == 404, describe(resp)  # authorized; the repository does not exist yet
    resp = requests.get(f"{server.url}/v2/", headers={"Authorization": f"Bearer {access}x"})
    assert resp.status_code == 401, describe(resp)
    resp = requests.get(f"{server.url}/v2/", auth=("alice", alice_pw))  # Basic straight at /v2/
    assert resp.status_code == 401, describe(resp)

    log = server.log_path.read_text(errors="replace")
    assert "failed login" in log, "the failed logins should be logged (without their passwords)"
    server.secrets += [identity, access, refresh]
    for secret in server.secrets:
        assert secret not in log, f"the server log contains a secret ({secret[:6]}...)"
    assert "eyJ0eXAiOiJKV1Qi" not in log, 'a token (base64 of \'{"typ":"JWT"\') is in the server log'


def test_push_does_not_mount_from_a_repository_the_user_cannot_pull(
    wharf_auth, docker, docker_config, images, docker_refs
):
    """docker offers a cross-repository mount from any repository it pushed the layer
    to before (here: admin's push to secret/app, in the same daemon). alice may not
    pull there: the mount is refused, docker uploads the layer instead, and the
    push works."""
    admin = docker_config("admin")
    admin.login(wharf_auth.docker_host, "admin", wharf_auth.users["admin"])
    digest = push_busybox(admin, images, docker_refs, f"{wharf_auth.docker_host}/secret/app:1")

    alice = docker_config("alice")
    alice.login(wharf_auth.docker_host, "alice", wharf_auth.users["alice"])
    ref = docker_refs.tag(images.ensure(images.busybox), f"{wharf_auth.docker_host}/team/app:1")
    pushed, out = alice.push(ref)
    assert pushed == digest
    assert "Mounted from" not in out, out
    assert_image_in_registry(wharf_auth.api("admin"), "team/app", "1", digest)
    assert catalog(wharf_auth.api("alice")) == ["team/app"]
    assert catalog(wharf_auth.api("admin")) == ["secret/app", "team/app"]
