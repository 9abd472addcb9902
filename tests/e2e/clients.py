"""Wrappers around the real registry clients (docker, skopeo, podman) and the
offline test images they push. Nothing here is pulled from the internet."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from support import run

BUSYBOX = Path("/bin/busybox")
BUSYBOX_APPLETS = (
    "sh ls cat echo true false sleep id hostname ps nc httpd wget env mkdir rm cp mv "
    "head tail grep uname wc test sha256sum "
    # used by the wharf-runner tests (test_runner.py)
    "seq tr dd cut sed awk yes mount touch printf sort date pwd chmod ln readlink stat kill"
).split()
# Users of both busybox images (docker's and runner_support's): `-u nobody` needs one.
BUSYBOX_PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
BUSYBOX_GROUP = "root:x:0:\nnogroup:x:65534:\n"
BIG_LAYERS = 5
BIG_LAYER_BYTES = 42 * 1024 * 1024
PUSH_DIGEST_RE = re.compile(r"digest: (sha(?:256|512):[0-9a-f]+) size: (\d+)")
PULL_DIGEST_RE = re.compile(r"^Digest: (sha(?:256|512):[0-9a-f]+)$", re.M)


class Docker:
    """The docker CLI. scripts/test exports DOCKER when /usr/local/bin/docker
    cannot talk to Debian's dockerd. `env` is added to every command's
    environment (e.g. DOCKER_CONFIG, so logins stay private to one test)."""

    def __init__(self, binary: str | None = None, env: dict | None = None):
        self.binary = binary or os.environ.get("DOCKER") or "docker"
        self.env = dict(env or {})

    def with_env(self, **env) -> "Docker":
        return Docker(self.binary, {**self.env, **env})

    def __call__(
        self,
        *args,
        timeout: float = 900,
        check: bool = True,
        env: dict | None = None,
        input: str | None = None,
    ):
        extra = {**self.env, **(env or {})}
        full_env = {**os.environ, **extra} if extra else None
        kwargs = {"input": input} if input is not None else {}
        return run([self.binary, *args], timeout=timeout, check=check, env=full_env, **kwargs)

    def login(self, host: str, user: str, password: str, check: bool = True):
        return self("login", "-u", user, "--password-stdin", host, input=password + "\n", check=check)

    def logout(self, host: str):
        return self("logout", host)

    def image_id(self, ref: str) -> str | None:
        proc = self("image", "inspect", "--format", "{{.Id}}", ref, check=False)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def inspect(self, ref: str) -> dict:
        return json.loads(self("image", "inspect", ref).stdout)[0]

    def push(self, ref: str) -> tuple[str, str]:
        """docker push; returns the manifest digest docker reports, and its output."""
        out = self("push", ref).stdout
        match = PUSH_DIGEST_RE.search(out)
        assert match, f"no digest in docker push output:\n{out}"
        return match.group(1), out

    def pull(self, ref: str) -> str:
        out = self("pull", ref).stdout
        match = PULL_DIGEST_RE.search(out)
        assert match, f"no digest in docker pull output:\n{out}"
        return match.group(1)

    def remove_image(self, image_id: str) -> None:
        """Remove the image and every tag of it, so a pull must fetch all layers."""
        self("rmi", "-f", image_id)
        assert self.image_id(image_id) is None, f"{image_id} still present after rmi"


class Podman:
    """podman with private storage under `root`, so it never touches the host's,
    and a private auth file (REGISTRY_AUTH_FILE) for `podman login`.
    Keep `root` short: podman refuses a runroot longer than 50 characters."""

    def __init__(self, root: Path):
        self.auth_file = root / "auth.json"
        self.auth_file.write_text('{"auths": {}}\n')  # podman push stats it: it must exist
        self.base = [
            "podman",
            "--root", root / "storage",
            "--runroot", root / "run",
            "--tmpdir", root / "tmp",
            "--storage-driver", "vfs",
            "--cgroup-manager", "cgroupfs",
            "--events-backend", "file",
        ]  # fmt: skip

    def __call__(self, *args, timeout: float = 600, check: bool = True, input: str | None = None):
        env = {**os.environ, "REGISTRY_AUTH_FILE": str(self.auth_file)}
        kwargs = {"input": input} if input is not None else {}
        return run([*self.base, *args], timeout=timeout, check=check, env=env, **kwargs)

    def image_id(self, ref: str) -> str:
        return self("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


def skopeo(*args, timeout: float = 600, check: bool = True, env: dict | None = None):
    full_env = None if env is None else {**os.environ, **env}
    return run(["skopeo", *args], timeout=timeout, check=check, env=full_env)


@dataclass
class TestImage:
    ref: str  # local docker tag
    archive: Path  # `docker save` tarball, for podman and for restoring the tag
    image_id: str


class TestImages:
    """Builds the session's images offline and keeps them loadable in docker.

    busybox: one layer, Debian's static busybox plus applet symlinks.
    big: FROM scratch + busybox + BIG_LAYERS layers of random bytes (> 200 MB),
    built with the legacy builder (buildx is not installed).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, docker: Docker, workdir: Path):
        self.docker = docker
        self.workdir = workdir
        self.busybox_tar = workdir / "busybox-rootfs.tar"
        self.busybox = self._build_busybox()
        self.big = self._build_big()

    def _build_busybox(self) -> TestImage:
        with open(BUSYBOX, "rb") as f:
            # A dynamically linked busybox names its loader in the first page.
            assert b"ld-linux" not in f.read(4096), f"{BUSYBOX} is not static: install busybox-static"
        rootfs = self.workdir / "rootfs"
        (rootfs / "bin").mkdir(parents=True)
        for d in ("etc", "tmp", "proc", "sys", "dev"):
            (rootfs / d).mkdir()
        shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
        for applet in BUSYBOX_APPLETS:
            (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "etc" / "passwd").write_text(BUSYBOX_PASSWD)
        (rootfs / "etc" / "group").write_text(BUSYBOX_GROUP)
        run(["tar", "--numeric-owner", "-C", rootfs, "-cf", self.busybox_tar, "."])
        ref = "wharf-e2e/busybox:latest"
        self.docker("import", "-c", 'CMD ["/bin/sh"]', self.busybox_tar, ref)
        return self._save(ref, "busybox.docker.tar")

    def _build_big(self) -> TestImage:
        ctx = self.workdir / "big-context"
        ctx.mkdir()
        shutil.copy2(self.busybox_tar, ctx / "bb.tar")
        lines = ["FROM scratch", "ADD bb.tar /"]
        for i in range(BIG_LAYERS):
            write_random_file(ctx / f"random{i}.bin", BIG_LAYER_BYTES)
            lines.append(f"COPY random{i}.bin /data/random{i}.bin")
        lines.append('CMD ["/bin/sh"]')
        (ctx / "Dockerfile").write_text("\n".join(lines) + "\n")
        ref = "wharf-e2e/big:latest"
        self.docker("build", "-q", "-t", ref, ctx, env={"DOCKER_BUILDKIT": "0"})
        shutil.rmtree(ctx)
        return self._save(ref, "big.docker.tar")

    def _save(self, ref: str, name: str) -> TestImage:
        archive = self.workdir / name
        self.docker("save", "-o", archive, ref)
        return TestImage(ref=ref, archive=archive, image_id=self.docker.image_id(ref))

    def ensure(self, image: TestImage) -> str:
        """Make sure the local tag exists (a test may have removed it); returns the ref."""
        if self.docker.image_id(image.ref) != image.image_id:
            self.docker("load", "-i", image.archive)
        assert self.docker.image_id(image.ref) == image.image_id
        return image.ref

    def remove_all(self) -> None:
        for image in (self.busybox, self.big):
            self.docker("rmi", "-f", image.image_id, check=False)


def write_random_file(path: Path, size: int, block: int = 4 * 1024 * 1024) -> None:
    with open(path, "wb") as f:
        for offset in range(0, size, block):
            f.write(os.urandom(min(block, size - offset)))
