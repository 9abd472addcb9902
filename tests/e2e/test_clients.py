"""Round trips through wharf with the real clients users have: docker, skopeo,
podman and oras-py. Every test checks that digests and bytes survive unchanged."""

from __future__ import annotations

import json
import os
from pathlib import Path

import oras.client
import oras.oci
import pytest

from clients import skopeo
from support import assert_image_in_registry, describe, digest_matches, error_codes, sha256_digest

NO_TLS = ("--src-tls-verify=false", "--dest-tls-verify=false")


def docker_roundtrip(docker, images, image, wharf, docker_refs, repo: str) -> tuple[str, dict]:
    """Push a session image, check it in the registry, delete it locally, pull it back.

    Returns the registry ref and the manifest the registry serves for it."""
    src = images.ensure(image)
    original_layers = docker.inspect(src)["RootFS"]["Layers"]
    ref = docker_refs.tag(src, f"{wharf.docker_host}/{repo}:1")
    pushed, _ = docker.push(ref)
    manifest = assert_image_in_registry(wharf.api(), repo, "1", pushed)

    docker.remove_image(image.image_id)
    assert docker.pull(ref) == pushed
    pulled = docker.inspect(ref)
    assert pulled["Id"] == image.image_id, "pulled image ID differs from the pushed one"
    assert pulled["RootFS"]["Layers"] == original_layers
    assert f"{wharf.docker_host}/{repo}@{pushed}" in pulled["RepoDigests"]
    return ref, manifest


# --- docker -----------------------------------------------------------------


def test_docker_push_pull_run(wharf, docker, images, docker_refs):
    ref, _ = docker_roundtrip(docker, images, images.busybox, wharf, docker_refs, "e2e/busybox")
    out = docker("run", "--rm", "--network", "none", ref, "echo", "hello").stdout
    assert out == "hello\n"


def test_docker_cross_repo_mount(wharf, docker, images, docker_refs):
    """docker mounts layers it already pushed to another repository of the same registry."""
    src = images.ensure(images.busybox)
    first, _ = docker.push(docker_refs.tag(src, f"{wharf.docker_host}/mount/a:1"))
    second, out = docker.push(docker_refs.tag(src, f"{wharf.docker_host}/mount/b:1"))
    assert second == first
    assert "Mounted from mount/a" in out, out
    assert_image_in_registry(wharf.api(), "mount/b", "1", second)


def test_docker_big_multilayer_image(wharf, docker, images, docker_refs):
    _, manifest = docker_roundtrip(docker, images, images.big, wharf, docker_refs, "e2e/big")
    layers = manifest["layers"]
    assert len(layers) >= 6
    assert sum(layer["size"] for layer in layers) > 200 * 1024 * 1024


# --- skopeo -----------------------------------------------------------------


def skopeo_push_busybox(wharf, images, repo_tag: str, *extra) -> str:
    """skopeo copy from the docker daemon into wharf; returns the registry's digest."""
    skopeo("copy", *NO_TLS, *extra, f"docker-daemon:{images.ensure(images.busybox)}",
           f"docker://{wharf.host}/{repo_tag}")  # fmt: skip
    repo, _, tag = repo_tag.rpartition(":")
    return wharf.api().manifest_digest(repo, tag)


def skopeo_inspect(wharf, repo_tag: str, *extra) -> str:
    return skopeo("inspect", "--tls-verify=false", *extra, f"docker://{wharf.host}/{repo_tag}").stdout


def test_skopeo_copy_from_daemon_and_inspect(wharf, images):
    digest = skopeo_push_busybox(wharf, images, "skopeo/bb:1")
    assert_image_in_registry(wharf.api(), "skopeo/bb", "1", digest)

    info = json.loads(skopeo_inspect(wharf, "skopeo/bb:1"))
    assert info["Digest"] == digest
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{wharf.host}/skopeo/bb:1").stdout
    assert sha256_digest(raw.encode()) == digest


def test_skopeo_copy_to_oci_layout_and_back(wharf, images, tmp_path):
    api = wharf.api()
    skopeo_push_busybox(wharf, images, "skopeo/bb:1")
    registry_manifest, _, _ = api.manifest_json("skopeo/bb", "1")

    layout = tmp_path / "layout"
    skopeo("copy", *NO_TLS, f"docker://{wharf.host}/skopeo/bb:1", f"oci:{layout}:bb")
    index = json.loads((layout / "index.json").read_text())
    (oci_desc,) = index["manifests"]
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert digest_matches(blob.read_bytes(), f"sha256:{blob.name}"), f"corrupt blob {blob}"
    oci_manifest = json.loads(read_blob(layout, oci_desc["digest"]))
    assert [layer["digest"] for layer in oci_manifest["layers"]] == [
        layer["digest"] for layer in registry_manifest["layers"]
    ], "layer bytes changed on the way from wharf to the OCI layout"

    # And back into wharf: an OCI manifest must be stored byte for byte.
    skopeo("copy", *NO_TLS, f"oci:{layout}:bb", f"docker://{wharf.host}/skopeo/bb-oci:1")
    assert_image_in_registry(api, "skopeo/bb-oci", "1", oci_desc["digest"])
    _, raw, resp = api.manifest_json("skopeo/bb-oci", "1")
    assert raw == read_blob(layout, oci_desc["digest"])
    assert resp.headers["Content-Type"].startswith("application/vnd.oci.image.manifest.v1+json")


def read_blob(layout: Path, digest: str) -> bytes:
    algorithm, _, hexdigest = digest.partition(":")
    return (layout / "blobs" / algorithm / hexdigest).read_bytes()


def test_skopeo_list_tags(wharf, images):
    skopeo_push_busybox(wharf, images, "skopeo/bb:1")
    for tag in ("2", "v3.0"):
        # registry-to-registry copy within wharf (blobs may be mounted)
        skopeo(
            "copy", *NO_TLS, f"docker://{wharf.host}/skopeo/bb:1", f"docker://{wharf.host}/skopeo/bb:{tag}"
        )
    listed = json.loads(skopeo("list-tags", "--tls-verify=false", f"docker://{wharf.host}/skopeo/bb").stdout)
    assert sorted(listed["Tags"]) == ["1", "2", "v3.0"]
    assert sorted(wharf.api().tags("skopeo/bb")) == ["1", "2", "v3.0"]
    catalog = wharf.api().request("GET", "/v2/_catalog")
    assert catalog.status_code == 200, describe(catalog)
    assert catalog.json()["repositories"] == ["skopeo/bb"], describe(catalog)


def test_skopeo_delete(wharf, images):
    api = wharf.api()
    doomed = skopeo_push_busybox(wharf, images, "skopeo/bb:doomed")
    # An OCI conversion of the same image has another digest and must survive.
    kept = skopeo_push_busybox(wharf, images, "skopeo/bb:kept", "--format", "oci")
    assert kept != doomed

    skopeo("delete", "--tls-verify=false", f"docker://{wharf.host}/skopeo/bb:doomed")

    for ref in (doomed, "doomed"):
        resp = api.get_manifest("skopeo/bb", ref)
        assert resp.status_code == 404, describe(resp)
        assert error_codes(resp) == ["MANIFEST_UNKNOWN"], describe(resp)
    assert api.manifest_digest("skopeo/bb", "kept") == kept
    assert api.tags("skopeo/bb") == ["kept"]
    inspect = skopeo("inspect", "--tls-verify=false", f"docker://{wharf.host}/skopeo/bb:doomed", check=False)
    assert inspect.returncode != 0


# --- podman -----------------------------------------------------------------


def test_podman_push_pull(wharf, images, podman, tmp_path):
    pusher = podman()
    pusher("load", "-i", images.busybox.archive)
    image_id = images.busybox.image_id.removeprefix("sha256:")
    assert pusher.image_id(image_id) == image_id

    ref = f"{wharf.host}/podman/bb:1"
    digest_file = tmp_path / "digest"
    pusher("push", "--tls-verify=false", "--digestfile", digest_file, image_id, f"docker://{ref}")
    digest = digest_file.read_text().strip()
    assert_image_in_registry(wharf.api(), "podman/bb", "1", digest)

    puller = podman()
    puller("pull", "--tls-verify=false", ref)
    assert puller("image", "inspect", "--format", "{{.Digest}}", ref).stdout.strip() == digest
    assert puller.image_id(ref) == image_id


def test_podman_image_index_pulled_by_docker(wharf, docker, images, podman, docker_refs, tmp_path):
    """podman pushes an OCI image index; wharf serves it as is and docker pulls and runs it."""
    pusher = podman()
    pusher("load", "-i", images.busybox.archive)
    image_id = images.busybox.image_id.removeprefix("sha256:")
    index_ref = f"{wharf.host}/podman/index:multi"
    pusher("manifest", "create", index_ref)
    pusher("manifest", "add", index_ref, f"containers-storage:{image_id}")
    digest_file = tmp_path / "digest"
    pusher("manifest", "push", "--all", "--tls-verify=false", "--digestfile", digest_file,
           index_ref, f"docker://{index_ref}")  # fmt: skip
    digest = digest_file.read_text().strip()

    api = wharf.api()
    index, raw, resp = api.manifest_json("podman/index", "multi")
    assert digest_matches(raw, digest) and api.manifest_digest("podman/index", "multi") == digest
    assert resp.headers["Content-Type"].startswith(index["mediaType"]), describe(resp)
    (entry,) = index["manifests"]
    assert_image_in_registry(api, "podman/index", entry["digest"], entry["digest"])

    ref = docker_refs.track(f"{wharf.docker_host}/podman/index:multi")
    assert docker.pull(ref) == digest
    assert docker("run", "--rm", "--network", "none", ref, "echo", "hello").stdout == "hello\n"


# --- oras-py ----------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["monolithic", "chunked"])
def test_oras_file_artifact(wharf, tmp_path, chunked):
    src = tmp_path / "src" / "payload.bin"
    src.parent.mkdir()
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    target = f"{wharf.host}/oras/artifact:v1"

    client = oras.client.OrasClient(hostname=wharf.host, insecure=True)
    resp = client.push(target=target, files=[str(src)], disable_path_validation=True,
                       do_chunked=chunked, chunk_size=1024 * 1024, quiet=True)  # fmt: skip
    assert resp.status_code == 201, describe(resp)

    manifest, _, _ = wharf.api().manifest_json("oras/artifact", "v1")
    (layer,) = manifest["layers"]
    assert layer["digest"] == sha256_digest(src.read_bytes())
    assert layer["annotations"]["org.opencontainers.image.title"] == "payload.bin"

    outdir = tmp_path / "out"
    files = client.pull(target=target, outdir=str(outdir))
    assert [Path(f).name for f in files] == ["payload.bin"]
    assert (outdir / "payload.bin").read_bytes() == src.read_bytes()


def test_oras_referrer(wharf, tmp_path):
    """oras-py pushes an artifact whose subject is another; wharf lists it as a referrer."""
    api = wharf.api()
    client = oras.client.OrasClient(hostname=wharf.host, insecure=True)
    for name in ("subject.txt", "signature.txt"):
        (tmp_path / name).write_text(f"{name}\n")

    client.push(target=f"{wharf.host}/oras/ref:subject", files=[str(tmp_path / "subject.txt")],
                disable_path_validation=True, quiet=True)  # fmt: skip
    subject_digest = api.manifest_digest("oras/ref", "subject")
    _, raw, _ = api.manifest_json("oras/ref", subject_digest)
    subject = oras.oci.Subject(
        mediaType="application/vnd.oci.image.manifest.v1+json", digest=subject_digest, size=len(raw)
    )
    resp = client.push(target=f"{wharf.host}/oras/ref:sig", files=[str(tmp_path / "signature.txt")],
                       subject=subject, disable_path_validation=True, quiet=True)  # fmt: skip
    assert resp.status_code == 201, describe(resp)
    referrer_digest = api.manifest_digest("oras/ref", "sig")

    resp = api.request("GET", f"/v2/oras/ref/referrers/{subject_digest}")
    assert resp.status_code == 200, describe(resp)
    assert resp.headers["Content-Type"].startswith("application/vnd.oci.image.index.v1+json"), describe(resp)
    assert [m["digest"] for m in resp.json()["manifests"]] == [referrer_digest]
