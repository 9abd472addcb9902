"""Checks of deploy/, as far as this machine allows.

- systemd units: `systemd-analyze verify` (with ExecStart pointed at the built
  binaries), the hardening score of the server unit, the runner unit's
  Delegate=yes / KillMode=process, the flags of each ExecStart against the
  binaries' own --help, and the server unit's command line run for real.
- compose and Kubernetes YAML: parsed with PyYAML, with structural checks:
  every WHARF_* variable is one the server reads (from server/src/config.rs),
  two replicas, probes on /healthz and /readyz (asked of a running server),
  ports, volumes and secrets that refer to things that exist.
- Dockerfile: its stages parsed and checked; then its final stage built with
  Debian's docker (legacy builder). Docker Hub is out of reach here, so the
  base image is a local one made with `docker import` (the binary's shared
  libraries, bash, head and grep from this host) passed as RUNTIME_IMAGE,
  and the `builder` stage (which needs the Rust image and a release build)
  is replaced by a stage that holds the debug binary at the same paths. The
  final stage's instructions are used verbatim. The image then runs:
  `--version`, serving as its non-root user on its volume, and its
  HEALTHCHECK command.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from runner_support import runner_binary
from support import REPO_ROOT, free_port, run, server_binary

DEPLOY = REPO_ROOT / "deploy"
CONFIG_RS = REPO_ROOT / "server" / "src" / "config.rs"
# WHARF_* variables read outside the config table (clap's env, std::env).
EXTRA_ENV = {"WHARF_CONFIG", "WHARF_ADMIN_PASSWORD", "WHARF_LOG"}


def server_env_names() -> set[str]:
    """Every WHARF_* variable the server reads: the KEYS of config.rs
    (`section.key` -> WHARF_SECTION_KEY) and the few read directly."""
    text = CONFIG_RS.read_text()
    block = re.search(r"const KEYS: &\[&str\] = &\[(.*?)\];", text, re.S)
    assert block, "no KEYS table in config.rs"
    keys = re.findall(r'"([a-z_.]+)"', block.group(1))
    assert "listen" in keys and "catalog.url" in keys, keys
    sources = "\n".join(p.read_text() for p in (REPO_ROOT / "server" / "src").rglob("*.rs"))
    for extra in EXTRA_ENV:
        assert f'"{extra}"' in sources, f"{extra} is no longer read by the server"
    return {"WHARF_" + k.replace(".", "_").upper() for k in keys} | EXTRA_ENV


def assert_known_env(names, where: str) -> None:
    known = server_env_names()
    wharf = {n for n in names if n.startswith("WHARF_")}
    unknown = sorted(wharf - known)
    assert not unknown, f"{where}: variables the server does not read: {unknown}"


def binary(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} not found: build the workspace first")
    return path


# ---- systemd ------------------------------------------------------------------


def unit_lines(path: Path) -> dict[str, list[str]]:
    """Key -> values of a unit file (keys may repeat)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def verified_copy(tmp_path: Path, unit: str, installed: str, real: Path) -> Path:
    """The unit with its ExecStart binary replaced by the built one (verify
    checks that it exists and is executable)."""
    text = (DEPLOY / "systemd" / unit).read_text()
    assert installed in text
    copy = tmp_path / unit
    copy.write_text(text.replace(installed, str(real)))
    return copy


def systemd_verify(path: Path) -> None:
    proc = run(["systemd-analyze", "verify", str(path)], check=False, timeout=60)
    output = (proc.stdout + proc.stderr).strip()
    # Unknown keys and bad values are only warnings (exit 0): any output fails.
    assert proc.returncode == 0 and not output, f"systemd-analyze verify {path.name}:\n{output}"


def test_server_unit_verifies_is_hardened_and_its_command_serves(tmp_path):
    server = binary(server_binary())
    unit = verified_copy(tmp_path, "wharf-server.service", "/usr/local/bin/wharf-server", server)
    systemd_verify(unit)

    keys = unit_lines(DEPLOY / "systemd" / "wharf-server.service")
    for key, value in {
        "DynamicUser": "yes",
        "StateDirectory": "wharf",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "CapabilityBoundingSet": "",
    }.items():
        assert keys.get(key) == [value], f"{key}={keys.get(key)}"
    proc = run(["systemd-analyze", "security", "--offline=true", str(unit)], check=False, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.0, f"exposure {match.group(1)}:\n{proc.stdout}"

    # The ExecStart command line, with %E and %S pointing at temp dirs, serves.
    (exec_start,) = keys["ExecStart"]
    etc, state = tmp_path / "etc", tmp_path / "state"
    (etc / "wharf").mkdir(parents=True)
    port = free_port()
    config = (REPO_ROOT / "config" / "server.toml").read_text()
    config = re.sub(r'(?m)^listen = ".*"$', f'listen = "127.0.0.1:{port}"', config)
    (etc / "wharf" / "server.toml").write_text(config)
    argv = exec_start.replace("%E", str(etc)).replace("%S", str(state)).split()
    argv[0] = str(server)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        import requests

        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"the unit's command exited:\n{log.read_text()}"
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert (state / "wharf" / "catalog.db").exists(), "state is kept in StateDirectory"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runner_unit_delegates_cgroups_and_spares_the_shims(tmp_path):
    runner = binary(runner_binary())
    unit = verified_copy(tmp_path, "wharf-runner.service", "/usr/local/bin/wharf-runner", runner)
    systemd_verify(unit)
    keys = unit_lines(DEPLOY / "systemd" / "wharf-runner.service")
    assert keys["Delegate"] == ["yes"]
    assert keys["KillMode"] == ["process"], "a daemon restart must not kill the shims"
    assert "User" not in keys and "DynamicUser" not in keys, "the daemon runs as root"
    (exec_start,) = keys["ExecStart"]
    argv = exec_start.split()
    assert argv[:2] == ["/usr/local/bin/wharf-runner", "daemon"], argv
    help_text = run([str(runner), "daemon", "--help"]).stdout
    for flag in (a for a in argv[2:] if a.startswith("--")):
        assert flag in help_text, f"wharf-runner daemon has no {flag}:\n{help_text}"
    # The socket is where the CLI looks by default.
    assert "/run/wharf-runner/runner.sock" in help_text and "/run/wharf-runner/runner.sock" in argv


# ---- compose --------------------------------------------------------------------


def test_compose_wires_server_postgres_and_s3():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"wharf", "postgres", "minio"} <= set(services), services.keys()
    wharf = services["wharf"]
    build = wharf["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == REPO_ROOT.resolve()
    assert (context / build["dockerfile"]).is_file()
    env = wharf["environment"]
    assert_known_env(env, "compose.yaml wharf.environment")
    assert env["WHARF_CATALOG_URL"].startswith("postgres://")
    assert "@postgres:5432/" in env["WHARF_CATALOG_URL"]
    assert env["WHARF_STORAGE_BACKEND"] == "s3"
    assert env["WHARF_STORAGE_ENDPOINT"].startswith("http://minio:")
    assert env["WHARF_STORAGE_ALLOW_HTTP"] == "true"
    assert env["WHARF_AUTH_ENABLED"] == "true"
    # The bucket wharf uses is the one the one-shot service makes.
    assert services["bucket"]["entrypoint"][-1].endswith("/" + env["WHARF_STORAGE_BUCKET"])
    assert wharf["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert wharf["depends_on"]["bucket"]["condition"] == "service_completed_successfully"
    assert "5000:5000" in wharf["ports"]
    assert any(v.endswith(":/var/lib/wharf") for v in wharf["volumes"])
    # No secret is written into the file: each comes from the environment.
    for name in ("WHARF_ADMIN_PASSWORD", "WHARF_STORAGE_SECRET_ACCESS_KEY"):
        assert env[name].startswith("${"), name
    pg = services["postgres"]["environment"]
    assert pg["POSTGRES_PASSWORD"].startswith("${")
    for named in (v.split(":")[0] for s in services.values() for v in s.get("volumes", [])):
        assert named in compose["volumes"], named


# ---- Kubernetes ---------------------------------------------------------------------


def k8s_objects() -> dict[tuple[str, str], dict]:
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    objects = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((DEPLOY / "k8s" / name).read_text()):
            if doc:
                objects[(doc["kind"], doc["metadata"]["name"])] = doc
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert files == set(kustomization["resources"]), "every manifest is in the kustomization"
    return objects


def test_k8s_manifests_run_two_replicas_with_probes_on_the_servers_endpoints(wharf):
    objects = k8s_objects()
    deployment = objects[("Deployment", "wharf-server")]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 5000}

    # Probes: the paths answer 200 on a running server.
    probes = {kind: container[kind]["httpGet"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    import requests

    for kind, probe in probes.items():
        assert probe["port"] in ports
        resp = requests.get(f"{wharf.url}{probe['path']}", timeout=10)
        assert resp.status_code == 200, f"{kind} {probe['path']}: {resp.status_code} {resp.text!r}"
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]

    # Configuration: every env source exists and names variables the server reads.
    env_names = []
    for source in container["envFrom"]:
        if "configMapRef" in source:
            data = objects[("ConfigMap", source["configMapRef"]["name"])]["data"]
        else:
            data = objects[("Secret", source["secretRef"]["name"])]["stringData"]
        env_names += list(data)
    assert_known_env(env_names, "k8s ConfigMap/Secret")
    config = objects[("ConfigMap", "wharf-server")]["data"]
    secret = objects[("Secret", "wharf-server")]["stringData"]
    assert secret["WHARF_CATALOG_URL"].startswith("postgres://")
    assert config["WHARF_STORAGE_BACKEND"] == "s3"
    assert "WHARF_STORAGE_SECRET_ACCESS_KEY" in secret and "WHARF_STORAGE_SECRET_ACCESS_KEY" not in config

    # Mounts: each refers to a volume; the files named by the config are mounted.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    for m in mounts.values():
        assert m["name"] in volumes, m

    def mounted_file(path: str) -> None:
        directory, _, name = path.rpartition("/")
        assert directory in mounts, f"{path}: nothing mounted at {directory}"
        volume = volumes[mounts[directory]["name"]]
        secret_name = volume["secret"]["secretName"]
        items = {i["path"]: i["key"] for i in volume["secret"]["items"]}
        assert items[name] in objects[("Secret", secret_name)]["stringData"], path

    mounted_file(config["WHARF_AUTH_KEY_PATH"])
    mounted_file(config["WHARF_CONFIG"])
    assert config["WHARF_DATA_DIR"] in mounts, "the data dir is a writable volume"

    # Non-root as the image's user, with a read-only root filesystem.
    user = dockerfile_final_stage_value("USER").split(":")[0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert str(pod["securityContext"]["runAsUser"]) == user
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False

    service = objects[("Service", "wharf-server")]["spec"]
    assert service["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["ports"]] == ["http"]


# ---- Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "a continuation runs off the end of the Dockerfile"
    return out


def dockerfile_stages() -> tuple[list, list[list[tuple[str, str]]]]:
    """(global ARGs, stages), each stage starting with its FROM."""
    instructions = dockerfile_instructions((DEPLOY / "Dockerfile").read_text())
    globals_, stages = [], []
    for ins in instructions:
        if ins[0] == "FROM":
            stages.append([ins])
        elif stages:
            stages[-1].append(ins)
        else:
            assert ins[0] == "ARG", f"only ARG may precede the first FROM: {ins}"
            globals_.append(ins)
    return globals_, stages


def dockerfile_final_stage_value(instruction: str) -> str:
    _, stages = dockerfile_stages()
    values = [rest for word, rest in stages[-1] if word == instruction]
    assert len(values) == 1, f"{instruction}: {values}"
    return values[0]


def test_dockerfile_is_a_two_stage_build_with_a_minimal_non_root_final_stage():
    globals_, stages = dockerfile_stages()
    args = dict(a[1].split("=", 1) for a in globals_)
    assert set(args) == {"RUST_IMAGE", "RUNTIME_IMAGE"}
    assert "rust:" in args["RUST_IMAGE"] and "slim" in args["RUNTIME_IMAGE"]
    assert len(stages) == 2
    builder, final = stages
    assert builder[0] == ("FROM", "${RUST_IMAGE} AS builder")
    assert final[0] == ("FROM", "${RUNTIME_IMAGE}")
    build = " ".join(rest for word, rest in builder if word == "RUN")
    assert "cargo build --release --locked -p wharf-server" in build
    words = [word for word, _ in final]
    assert "RUN" not in words, "the final stage only copies files in"
    copies = [rest for word, rest in final if word == "COPY"]
    assert all(c.startswith("--from=builder") for c in copies), copies
    assert any("/usr/local/bin/wharf-server" in c for c in copies)
    user = dockerfile_final_stage_value("USER")
    assert user.split(":")[0] not in ("0", "root", ""), user
    assert json.loads(dockerfile_final_stage_value("VOLUME")) == ["/var/lib/wharf"]
    assert dockerfile_final_stage_value("EXPOSE") == "5000"
    assert "/healthz" in dockerfile_final_stage_value("HEALTHCHECK")
    assert json.loads(dockerfile_final_stage_value("ENTRYPOINT")) == ["/usr/local/bin/wharf-server"]
    env = dict(pair.split("=", 1) for pair in dockerfile_final_stage_value("ENV").split())
    assert_known_env(env, "Dockerfile ENV")
    assert env["WHARF_DATA_DIR"] == "/var/lib/wharf"
    assert env["WHARF_LISTEN"].endswith(":5000")
    # The build context (the repository root) leaves out build output.
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignored


def copy_with_libraries(paths: list[Path], rootfs: Path) -> None:
    """Copy executables into rootfs at the same paths, with the shared
    libraries ldd names for them."""
    wanted = set()
    for path in paths:
        wanted.add(Path(path))
        out = run(["ldd", str(path)]).stdout
        for lib in re.findall(r"(/\S+) \(0x", out):
            wanted.add(Path(lib))
    for path in wanted:
        dest = rootfs / path.relative_to("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path.resolve(), dest)


def test_dockerfile_final_stage_builds_and_the_image_serves(docker, tmp_path):
    server = binary(server_binary())
    tag = secrets.token_hex(4)
    base_ref = f"wharf-deploy-test/runtime-base:{tag}"
    image_ref = f"wharf-deploy-test/server:{tag}"
    container = f"wharf-deploy-test-{tag}"

    # A runtime base of this host's files: what the binary and the
    # HEALTHCHECK (bash, head, grep) need. It stands in for debian:trixie-slim.
    rootfs = tmp_path / "rootfs"
    for d in ("tmp", "etc", "var/lib", "proc", "sys", "dev"):
        (rootfs / d).mkdir(parents=True)
    tools = [Path(shutil.which(t)).resolve() for t in ("bash", "head", "grep")]
    copy_with_libraries([server, *tools], rootfs)
    for tool in tools:
        link = rootfs / "bin" / tool.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(tool)
    (rootfs / "usr" / "local" / "bin").mkdir(parents=True, exist_ok=True)
    (rootfs / Path(str(server)).relative_to("/")).unlink()  # only the image's copy
    base_tar = tmp_path / "base.tar"
    run(["tar", "--numeric-owner", "-C", rootfs, "-cf", base_tar, "."])
    shutil.rmtree(rootfs)

    # The build context: the builder stage's output, at the paths the final
    # stage copies from, and the final stage verbatim.
    ctx = tmp_path / "context"
    out = ctx / "out"
    (out / "usr/local/bin").mkdir(parents=True)
    (out / "var/lib/wharf").mkdir(parents=True)
    (out / "etc/ssl/certs").mkdir(parents=True)
    run(["objcopy", "--strip-debug", str(server), str(out / "usr/local/bin/wharf-server")])
    shutil.copy2("/etc/ssl/certs/ca-certificates.crt", out / "etc/ssl/certs/ca-certificates.crt")
    text = (DEPLOY / "Dockerfile").read_text()
    final_start = text.index("FROM ${RUNTIME_IMAGE}")
    builder_start = text.index("FROM ${RUST_IMAGE} AS builder")
    test_dockerfile = (
        text[:builder_start] + "FROM scratch AS builder\nCOPY out/ /out/\n\n" + text[final_start:]
    )
    (ctx / "Dockerfile").write_text(test_dockerfile)

    try:
        docker("import", str(base_tar), base_ref)
        build = docker(
            "build", "-q", "--build-arg", f"RUNTIME_IMAGE={base_ref}", "-t", image_ref, str(ctx),
            env={"DOCKER_BUILDKIT": "0"},
        )  # fmt: skip
        assert build.returncode == 0
        config = docker.inspect(image_ref)["Config"]
        assert config["User"] == "10001:10001"
        assert "5000/tcp" in config["ExposedPorts"]
        assert "/var/lib/wharf" in config["Volumes"]
        assert config["Entrypoint"] == ["/usr/local/bin/wharf-server"]
        assert config["Cmd"] == ["serve"]
        health = config["Healthcheck"]["Test"]
        assert health[0] == "CMD" and "/healthz" in health[-1], health

        version = docker("run", "--rm", "--network", "none", image_ref, "--version").stdout
        assert version.strip() == "wharf-server " + cargo_version(), version

        # Serving: as uid 10001, with the catalog written into the volume.
        docker("run", "-d", "--name", container, "--network", "none", image_ref)

        def http_status(path: str) -> str:
            probe = (
                "exec 3<>/dev/tcp/127.0.0.1/5000 && "
                f"printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3"
            )
            proc = docker("exec", container, "/bin/bash", "-c", probe, check=False)
            return proc.stdout.strip()

        deadline = time.monotonic() + 30
        while " 200 " not in http_status("/v2/"):
            assert time.monotonic() < deadline, docker("logs", container, check=False).stderr
            time.sleep(0.2)
        uid = docker("exec", container, "/bin/bash", "-c", "echo $UID").stdout.strip()
        assert uid == "10001"
        files = docker("exec", container, "/bin/bash", "-c", "echo /var/lib/wharf/*").stdout
        assert "/var/lib/wharf/catalog.db" in files.split(), files

        # The HEALTHCHECK command agrees with /healthz: it passes exactly when
        # /healthz answers 200, and its mechanics pass on a path that does.
        healthy = " 200 " in http_status("/healthz")
        check = docker("exec", container, *health[1:], check=False)
        assert (check.returncode == 0) == healthy, (check, http_status("/healthz"))
        on_v2 = [part.replace("/healthz", "/v2/") for part in health[1:]]
        assert docker("exec", container, *on_v2, check=False).returncode == 0
        docker("stop", "-t", "10", container)
        assert docker("inspect", "--format", "{{.State.ExitCode}}", container).stdout.strip() == "0"
    finally:
        docker("rm", "-f", container, check=False)
        docker("rmi", "-f", image_ref, check=False)
        docker("rmi", "-f", base_ref, check=False)


def cargo_version() -> str:
    text = (REPO_ROOT / "Cargo.toml").read_text()
    match = re.search(r'(?ms)^\[workspace\.package\].*?^version = "([^"]+)"', text)
    assert match
    return match.group(1)
