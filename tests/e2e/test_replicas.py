"""Several stateless replicas: two wharf-server processes with their blobs on S3
(moto) and one shared catalog, behind an nginx that sends each request to the
next replica. Real docker and skopeo push and pull through it, so every upload
session is continued by a replica other than the one that started it; a
chunked upload is also driven by hand across the replicas, and blob GETs can
be redirected to presigned S3 URLs."""

from __future__ import annotations

import hashlib
import os

import requests

import pytest

from clients import skopeo
from s3 import MOTO_KEY, MOTO_SECRET, TlsProxy, catalog_url, make_tls_certs, moto, replicas  # noqa: F401
from support import RegistryApi, assert_image_in_registry, describe, sha256_digest

MIB = 1024 * 1024


def api_with_token(url: str, cluster, repo: str) -> RegistryApi:
    """A client that sends a token with every request from the start. Without
    one, a request with a large body gets an early 401 and the server closes
    the connection while nginx still streams the body (which nginx answers
    with 502); docker and skopeo never send a body before they have a token."""
    api = RegistryApi(url, credentials=("alice", cluster.users["alice"]))
    api.session.headers["Authorization"] = f"Bearer {api.token(f'repository:{repo}:pull,push')}"
    return api


def blob_key(digest: str) -> str:
    algorithm, hex_ = digest.split(":", 1)
    return f"blobs/{algorithm}/{hex_[:2]}/{hex_}"


def served_by_each(cluster, method: str | None = None) -> list[int]:
    counts = cluster.proxy.requests_by_upstream(method)
    return [counts.get(s.host, 0) for s in cluster.servers]


def log_requests(server, method: str) -> int:
    """Requests of `method` under /v2/ that the replica's own log shows."""
    text = server.log_path.read_text(errors="replace")
    return sum(1 for line in text.splitlines() if "request" in line and f"method={method}" in line and "/v2/" in line)


def assert_store_clean(cluster, blobs: dict[str, int]) -> None:
    """Every blob is in the bucket at its size, no upload part is left, and
    no multipart upload is left open."""
    keys = cluster.moto.keys(cluster.bucket)
    for digest, size in blobs.items():
        assert keys.get(blob_key(digest)) == size, f"{digest}: bucket has {keys.get(blob_key(digest))}"
    leftovers = [k for k in keys if k.startswith("uploads/")]
    assert not leftovers, f"upload parts left in the bucket: {leftovers}"
    assert not cluster.moto.open_multipart_uploads(cluster.bucket)


def test_docker_push_pull_multilayer_image_through_two_replicas(replicas, docker, docker_config, images, docker_refs):
    cluster = replicas(2)
    proxy = cluster.proxy
    alice = docker_config("alice")
    alice.login(proxy.docker_host, "alice", cluster.users["alice"])

    src = images.ensure(images.big)
    original_layers = docker.inspect(src)["RootFS"]["Layers"]
    ref = docker_refs.tag(src, f"{proxy.docker_host}/scale/big:1")
    pushed, _ = alice.push(ref)
    api = RegistryApi(proxy.url, credentials=("alice", cluster.users["alice"]))
    manifest = assert_image_in_registry(api, "scale/big", "1", pushed)
    assert len(manifest["layers"]) >= 6
    assert sum(layer["size"] for layer in manifest["layers"]) > 200 * MIB

    # Each replica took part in the uploads (PATCH and PUT) and the reads.
    for method in ("PATCH", "PUT", "GET"):
        each = served_by_each(cluster, method)
        assert all(n > 0 for n in each), f"{method} requests per replica: {each}"
    # ...as their own logs say too.
    for s in cluster.servers:
        assert log_requests(s, "PUT") > 0, s.log_tail()

    docker.remove_image(images.big.image_id)
    assert alice.pull(ref) == pushed
    pulled = docker.inspect(ref)
    assert pulled["Id"] == images.big.image_id
    assert pulled["RootFS"]["Layers"] == original_layers

    sizes = {layer["digest"]: layer["size"] for layer in manifest["layers"]}
    sizes[manifest["config"]["digest"]] = manifest["config"]["size"]
    assert_store_clean(cluster, sizes)


def test_skopeo_copy_round_trip_through_two_replicas(replicas, images, tmp_path):
    # The S3 credentials come from the AWS_* environment here.
    cluster = replicas(2, aws_env=True)
    host = cluster.proxy.host
    creds = f"alice:{cluster.users['alice']}"
    src = images.ensure(images.busybox)
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"docker-daemon:{src}", f"docker://{host}/scale/bb:1")
    layout = tmp_path / "layout"
    skopeo(
        "copy", "--src-tls-verify=false", "--src-creds", creds, f"docker://{host}/scale/bb:1", f"oci:{layout}:bb"
    )
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"oci:{layout}:bb", f"docker://{host}/scale/bb-oci:1")
    api = RegistryApi(cluster.proxy.url, credentials=("alice", cluster.users["alice"]))
    for repo in ("scale/bb", "scale/bb-oci"):
        manifest, _, _ = api.manifest_json(repo, "1")
        for layer in manifest["layers"]:
            api.assert_blob(repo, layer["digest"])
    # skopeo copy back to a directory and compare every blob with the layout's.
    back = tmp_path / "back"
    skopeo(
        "copy", "--src-tls-verify=false", "--src-creds", creds, f"docker://{host}/scale/bb-oci:1", f"oci:{back}:bb"
    )
    def blobs(d):
        return {p.name: p.read_bytes() for p in (d / "blobs" / "sha256").iterdir()}

    assert blobs(back) == blobs(layout)
    assert all(n > 0 for n in served_by_each(cluster)), served_by_each(cluster)


def test_chunked_upload_started_on_one_replica_is_finished_on_the_other(replicas):
    cluster = replicas(2)
    one, two = (api_with_token(s.url, cluster, "scale/chunked") for s in cluster.servers)
    data = os.urandom(13 * MIB + 777)
    digest = sha256_digest(data)

    # Start on one, chunks alternate, status on each, close on two.
    location = one.start_upload("scale/chunked")
    path = requests.utils.urlparse(location).path
    location, stored = one.patch_chunk(one.url(path), data[: 6 * MIB], 0)
    path = requests.utils.urlparse(location).path
    location, stored = two.patch_chunk(two.url(path), data[6 * MIB : 7 * MIB], stored)
    path = requests.utils.urlparse(location).path
    # A chunk that does not continue the upload is refused by either replica.
    r = one.request("PATCH", path, data=b"x", headers={"Content-Range": "0-0"})
    assert r.status_code == 416, describe(r)
    for api in (one, two):
        st = api.upload_status(path)
        assert st.status_code == 204 and st.headers["Range"] == f"0-{stored - 1}", describe(st)
    location, stored = one.patch_chunk(one.url(path), data[7 * MIB : 12 * MIB], stored)
    path = requests.utils.urlparse(location).path
    r = two.finish_upload(two.url(path), digest, body=data[stored:])
    assert r.status_code == 201, describe(r)
    for api in (one, two):
        got = api.get_blob("scale/chunked", digest)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == digest.split(":")[1]
    # The session is gone on both.
    for api in (one, two):
        assert api.upload_status(path).status_code == 404

    # The same across replicas with a wrong digest: refused, nothing stored.
    wrong = sha256_digest(b"not the bytes")
    location = two.start_upload("scale/chunked")
    path = requests.utils.urlparse(location).path
    location, stored = two.patch_chunk(two.url(path), data[: 6 * MIB], 0)
    path = requests.utils.urlparse(location).path
    location, stored = one.patch_chunk(one.url(path), data[6 * MIB : 9 * MIB], stored)
    path = requests.utils.urlparse(location).path
    r = two.finish_upload(two.url(path), wrong)
    assert r.status_code == 400 and "DIGEST_INVALID" in r.text, describe(r)
    assert one.get_blob("scale/chunked", wrong).status_code == 404
    assert blob_key(wrong) not in cluster.moto.keys(cluster.bucket, "blobs/")

    assert_store_clean(cluster, {digest: len(data)})


def test_blob_gets_redirect_to_presigned_s3_urls(replicas, images, tmp_path):
    cluster = replicas(2, redirect=True)
    api = api_with_token(cluster.proxy.url, cluster, "scale/redirect")
    data = os.urandom(7 * MIB + 3)
    digest = sha256_digest(data)
    r = api.monolithic_upload("scale/redirect", data, digest)
    assert r.status_code == 201, describe(r)

    r = api.request("GET", f"/v2/scale/redirect/blobs/{digest}", allow_redirects=False)
    assert r.status_code == 307, describe(r)
    assert r.headers["Docker-Content-Digest"] == digest
    target = r.headers["Location"]
    assert target.startswith(cluster.moto.endpoint + "/"), target
    assert "X-Amz-Signature=" in target
    # The presigned URL needs no credentials, and honours Range.
    got = requests.get(target, timeout=60)
    assert got.status_code == 200 and got.content == data
    part = requests.get(target, headers={"Range": "bytes=100-199"}, timeout=60)
    assert part.status_code == 206 and part.content == data[100:200]
    # Followed like a client does; HEAD is still answered by the registry.
    assert api.get_blob("scale/redirect", digest).content == data
    head = api.request("HEAD", f"/v2/scale/redirect/blobs/{digest}")
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data)
    # A blob the repository does not have is not signed for.
    other_api = api_with_token(cluster.proxy.url, cluster, "scale/other")
    other = other_api.request("GET", f"/v2/scale/other/blobs/{digest}", allow_redirects=False)
    assert other.status_code == 404, describe(other)

    # A real client follows the redirects: skopeo pushes, then pulls through them.
    host = cluster.proxy.host
    creds = f"alice:{cluster.users['alice']}"
    src = images.ensure(images.busybox)
    skopeo("copy", "--dest-tls-verify=false", "--dest-creds", creds, f"docker-daemon:{src}", f"docker://{host}/scale/rbb:1")
    skopeo(
        "copy", "--src-tls-verify=false", "--src-creds", creds, f"docker://{host}/scale/rbb:1", f"oci:{tmp_path / 'l'}:bb"
    )
    moto_log = cluster.moto.log_path.read_text(errors="replace")
    manifest, _, _ = api_with_token(cluster.proxy.url, cluster, "scale/rbb").manifest_json("scale/rbb", "1")
    layer = manifest["layers"][0]["digest"]
    assert f"GET /{cluster.bucket}/{blob_key(layer)}?X-Amz-" in moto_log, "skopeo did not fetch the layer from S3"


def test_s3_over_https_with_a_private_ca(moto, wharf_factory, tmp_path):  # noqa: F811
    """An https endpoint (nginx with a certificate of a private CA in front of
    moto): refused until `storage.ca_file` names the CA, then uploads go
    through rustls."""
    ca, cert, key = make_tls_certs(tmp_path / "tls")
    proxy = TlsProxy(tmp_path / "tls-nginx", f"127.0.0.1:{moto.port}", cert, key)
    proxy.start()
    try:
        bucket = moto.new_bucket()
        base = "\n".join(
            [
                "[storage]",
                'backend = "s3"',
                f'bucket = "{bucket}"',
                f'endpoint = "{proxy.url}"',
                f'access_key_id = "{MOTO_KEY}"',
                f'secret_access_key = "{MOTO_SECRET}"',
                "part_size_mib = 5",
            ]
        )
        untrusting = wharf_factory("untrusting", config=base + "\n")
        untrusting.secrets.append(MOTO_SECRET)
        with pytest.raises(AssertionError, match="exited"):
            untrusting.start()
        assert "certificate" in untrusting.log_path.read_text().lower(), untrusting.log_tail()

        server = wharf_factory("trusting", config=base + f'\nca_file = "{ca}"\n')
        server.secrets.append(MOTO_SECRET)
        server.start()
        api = server.api()
        data = os.urandom(11 * MIB + 5)
        digest = sha256_digest(data)
        r = api.monolithic_upload("tls/blob", data, digest)
        assert r.status_code == 201, describe(r)
        chunked = os.urandom(6 * MIB + 1)
        chunked_digest = api.chunked_upload("tls/blob", chunked, 4 * MIB)
        assert api.assert_blob("tls/blob", digest) == data
        assert api.assert_blob("tls/blob", chunked_digest) == chunked
        keys = moto.keys(bucket, "blobs/")
        assert keys.get(blob_key(digest)) == len(data)
        assert keys.get(blob_key(chunked_digest)) == len(chunked)
        assert f"/{bucket}/blobs/" in (proxy.dir / "access.log").read_text(), "nothing went through TLS"
    finally:
        proxy.stop()
