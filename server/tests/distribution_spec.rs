//! The OCI distribution-spec v1.1 MUSTs and SHOULDs, walked over real HTTP
//! against a wharf server started in-process (see `common`).
//!
//! Each test starts its own server on its own data directory. Every response
//! is also checked for `Docker-Distribution-API-Version` by the harness.

mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};

const REPO: &str = "library/app";

// ---- base ------------------------------------------------------------------------

#[tokio::test]
async fn base_endpoint_answers_200_with_api_version() {
    let srv = Server::start().await;
    let r = srv.get("/v2/").await.expect(200);
    assert_eq!(
        r.must_header("docker-distribution-api-version"),
        "registry/2.0"
    );
    // Errors carry the header too (the harness checks it on every answer).
    srv.get("/v2/nothing/here").await.expect(404);
    srv.get("/v3/").await.expect(404);
}

// ---- blob uploads -------------------------------------------------------------------

#[tokio::test]
async fn monolithic_post_with_digest_creates_the_blob() {
    let srv = Server::start().await;
    let data = pattern(4000, 1);
    let digest = sha256(&data);
    let r = srv
        .post(
            &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
            data.clone(),
        )
        .await
        .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let location = r.location();
    assert!(
        location.ends_with(&format!("/v2/{REPO}/blobs/{digest}")),
        "{location}"
    );
    // The Location is a pullable blob URL.
    let got = srv.get(&location).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
}

#[tokio::test]
async fn post_then_put_with_the_whole_body() {
    let srv = Server::start().await;
    let data = pattern(5000, 2);
    let digest = sha256(&data);
    let location = srv.start_upload(REPO).await;
    let r = srv
        .put_bytes(&with_query(&location, "digest", &digest), data.clone())
        .await
        .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
}

#[tokio::test]
async fn post_answers_202_with_location_and_upload_uuid() {
    let srv = Server::start().await;
    let r = srv
        .send(
            srv.request(Method::POST, &format!("/v2/{REPO}/blobs/uploads/"))
                .header("content-length", "0"),
        )
        .await
        .expect(202);
    let location = r.location();
    assert!(
        location.contains(&format!("/v2/{REPO}/blobs/uploads/")),
        "{location}"
    );
    // "The <location> MUST contain a UUID representing a unique session ID."
    let id = location
        .split(['/', '?'])
        .find(|part| uuid::Uuid::parse_str(part).is_ok())
        .unwrap_or_else(|| panic!("no UUID in {location}"));
    if let Some(legacy) = r.header("docker-upload-uuid") {
        assert_eq!(legacy, id);
    }
    // Two sessions never share an id.
    let other = srv.start_upload(REPO).await;
    assert_ne!(location, other);
}

#[tokio::test]
async fn chunked_upload_in_order() {
    let srv = Server::start().await;
    let data = pattern(3000, 3);
    let digest = sha256(&data);
    let mut location = srv.start_upload(REPO).await;
    for (i, chunk) in data[..2000].chunks(1000).enumerate() {
        let start = i * 1000;
        let end = start + chunk.len() - 1;
        let r = srv
            .patch(&location, chunk, Some(&format!("{start}-{end}")))
            .await
            .expect(202);
        assert_eq!(r.must_header("range"), format!("0-{end}"));
        location = r.location();
    }
    // The final chunk in the closing PUT, with its Content-Range.
    let rb = srv
        .request(Method::PUT, &with_query(&location, "digest", &digest))
        .header("content-type", "application/octet-stream")
        .header("content-range", "2000-2999")
        .header("content-length", "1000")
        .body(data[2000..].to_vec());
    let r = srv.send(rb).await.expect(201);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
}

#[tokio::test]
async fn chunked_upload_closed_by_an_empty_put() {
    let srv = Server::start().await;
    let data = pattern(2500, 4);
    let digest = sha256(&data);
    let location = srv.start_upload(REPO).await;
    let r = srv
        .patch(&location, &data[..1200], Some("0-1199"))
        .await
        .expect(202);
    let r = srv
        .patch(&r.location(), &data[1200..], Some("1200-2499"))
        .await
        .expect(202);
    assert_eq!(r.must_header("range"), "0-2499");
    let r = srv
        .put_bytes(&with_query(&r.location(), "digest", &digest), Vec::new())
        .await
        .expect(201);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
}

/// Chunks, then a closing PUT with the last one, on `srv`; checks the blob.
async fn chunked_upload_roundtrip(srv: &Server, data: &[u8], chunk: usize) {
    let digest = sha256(data);
    let mut location = srv.start_upload(REPO).await;
    let (head, last) = data.split_at(data.len() - chunk);
    for (i, c) in head.chunks(chunk).enumerate() {
        let start = i * chunk;
        let end = start + c.len() - 1;
        location = srv
            .patch(&location, c, Some(&format!("{start}-{end}")))
            .await
            .expect(202)
            .location();
    }
    let r = srv
        .put_bytes(&with_query(&location, "digest", &digest), last.to_vec())
        .await
        .expect(201);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data);
}

#[tokio::test]
async fn chunked_upload_on_the_general_object_store_path() {
    // The in-memory store has no local fast path: one part object per
    // chunk, concatenated at completion.
    let srv = Server::start_with(|s| {
        s.storage.backend = wharf_server::config::StorageBackend::Memory;
    })
    .await;
    chunked_upload_roundtrip(&srv, &pattern(3 * 1024 * 1024 + 17, 9), 1024 * 1024).await;
    chunked_upload_roundtrip(&srv, &pattern(5000, 10), 5000).await;
}

#[tokio::test]
async fn chunked_upload_on_the_local_fast_path() {
    let srv = Server::start().await;
    chunked_upload_roundtrip(&srv, &pattern(3 * 1024 * 1024 + 17, 11), 1024 * 1024).await;
    chunked_upload_roundtrip(&srv, &pattern(5000, 12), 5000).await;
}

#[tokio::test]
async fn an_interrupted_chunk_leaves_nothing_in_the_blob() {
    use tokio::io::AsyncWriteExt;
    let srv = Server::start().await;
    let data = pattern(1500, 13);
    let digest = sha256(&data);
    let location = srv.start_upload(REPO).await;
    let location = srv
        .patch(&location, &data[..1000], Some("0-999"))
        .await
        .expect(202)
        .location();
    // A chunk announced as 3 MiB that dies after 2 MiB: on the local store
    // (which writes 1 MiB batches) bytes were written past the session's end.
    let url = reqwest::Url::parse(&srv.url(&location)).expect("location URL");
    let mut sock = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    let head = format!(
        "PATCH {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Range: 1000-{}\r\nContent-Length: {}\r\n\r\n",
        url.path(),
        srv.addr,
        1000 + 3 * 1024 * 1024 - 1,
        3 * 1024 * 1024
    );
    sock.write_all(head.as_bytes()).await.expect("send head");
    sock.write_all(&pattern(2 * 1024 * 1024, 99))
        .await
        .expect("send body");
    drop(sock);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let st = srv.get(&location).await.expect(204);
    assert_eq!(st.must_header("range"), "0-999");
    let r = srv
        .patch(&location, &data[1000..], Some("1000-1499"))
        .await
        .expect(202);
    let r = srv
        .put_bytes(&with_query(&r.location(), "digest", &digest), Vec::new())
        .await
        .expect(201);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
    // And the stored object is exactly the blob, with no garbage past it.
    assert_eq!(srv.stored_blob_size(&digest).await, Some(1500));
}

#[tokio::test]
async fn out_of_order_and_repeated_chunks_get_416_and_the_upload_survives() {
    let srv = Server::start().await;
    let data = pattern(3000, 5);
    let digest = sha256(&data);
    let location = srv.start_upload(REPO).await;
    let r = srv
        .patch(&location, &data[..1000], Some("0-999"))
        .await
        .expect(202);
    let location = r.location();

    // A chunk that skips ahead.
    let r = srv.patch(&location, &data[2000..], Some("2000-2999")).await;
    r.expect_error(416, "BLOB_UPLOAD_INVALID");
    assert_eq!(r.must_header("range"), "0-999");
    assert!(r.must_header("location").contains("/blobs/uploads/"));

    // The first chunk again (a retry of a chunk already taken).
    let r = srv.patch(&location, &data[..1000], Some("0-999")).await;
    r.expect_error(416, "BLOB_UPLOAD_INVALID");
    assert_eq!(r.must_header("range"), "0-999");

    // A chunk overlapping the end.
    let r = srv
        .patch(&location, &data[500..1500], Some("500-1499"))
        .await;
    r.expect_error(416, "BLOB_UPLOAD_INVALID");

    // Nothing of that was taken: the status and the upload carry on.
    let st = srv.get(&location).await.expect(204);
    assert_eq!(st.must_header("range"), "0-999");
    let r = srv
        .patch(&location, &data[1000..2000], Some("1000-1999"))
        .await
        .expect(202);
    let r = srv
        .patch(&r.location(), &data[2000..], Some("2000-2999"))
        .await
        .expect(202);
    let r = srv
        .put_bytes(&with_query(&r.location(), "digest", &digest), Vec::new())
        .await
        .expect(201);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
}

#[tokio::test]
async fn streamed_patch_without_content_range() {
    let srv = Server::start().await;
    let data = pattern(200_000, 6);
    let digest = sha256(&data);
    let location = srv.start_upload(REPO).await;
    let pieces: Vec<Vec<u8>> = data[..150_000].chunks(7_000).map(<[u8]>::to_vec).collect();
    let r = srv.patch_streamed(&location, pieces).await.expect(202);
    assert_eq!(r.must_header("range"), "0-149999");
    // A second streamed PATCH appends.
    let r = srv
        .patch_streamed(&r.location(), vec![data[150_000..].to_vec()])
        .await
        .expect(202);
    assert_eq!(r.must_header("range"), "0-199999");
    let r = srv
        .put_bytes(&with_query(&r.location(), "digest", &digest), Vec::new())
        .await
        .expect(201);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.len(), data.len());
    assert!(got.body.as_ref() == data.as_slice());
}

#[tokio::test]
async fn streamed_closing_put_carries_the_last_chunk() {
    let srv = Server::start().await;
    let data = pattern(90_000, 17);
    let digest = sha256(&data);
    let location = srv.start_upload(REPO).await;
    let r = srv
        .patch(&location, &data[..40_000], Some("0-39999"))
        .await
        .expect(202);
    let stream = futures::stream::iter(
        data[40_000..]
            .chunks(9_000)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let rb = srv
        .request(Method::PUT, &with_query(&r.location(), "digest", &digest))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream));
    let r = srv.send(rb).await.expect(201);
    let got = srv.get(&r.location()).await.expect(200);
    assert!(got.body.as_ref() == data.as_slice());
}

#[tokio::test]
async fn large_blobs_round_trip_and_serve_ranges() {
    let srv = Server::start().await;
    // Larger than the store's write part size and its read chunk size.
    let data = pattern(3 * 1024 * 1024 + 12_345, 18);
    let digest = sha256(&data);
    let r = srv
        .post(
            &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
            data.clone(),
        )
        .await
        .expect(201);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.len(), data.len());
    assert!(got.body.as_ref() == data.as_slice());

    let rb = srv
        .request(Method::GET, &r.location())
        .header("range", "bytes=200000-2300000");
    let part = srv.send(rb).await.expect(206);
    assert_eq!(part.body.len(), 2_100_001);
    assert!(part.body.as_ref() == &data[200_000..=2_300_000]);

    // The same content in chunks of more than a megabyte, in another
    // repository.
    let mut location = srv.start_upload("big/two").await;
    let mut start = 0;
    for chunk in data.chunks(1_500_000) {
        let end = start + chunk.len() - 1;
        let r = srv
            .patch(&location, chunk, Some(&format!("{start}-{end}")))
            .await
            .expect(202);
        location = r.location();
        start = end + 1;
    }
    let r = srv
        .put_bytes(&with_query(&location, "digest", &digest), Vec::new())
        .await
        .expect(201);
    let got = srv.get(&r.location()).await.expect(200);
    assert!(got.body.as_ref() == data.as_slice());
}

#[tokio::test]
async fn pushing_an_existing_blob_again_is_fine() {
    let srv = Server::start().await;
    let data = pattern(4096, 19);
    let digest = srv.push_blob(REPO, &data).await;
    // Again, monolithic, in the same and in another repository.
    srv.push_blob(REPO, &data).await;
    srv.push_blob("second/repo", &data).await;
    // Again, chunked.
    let location = srv.start_upload("third/repo").await;
    let r = srv
        .patch(&location, &data, Some("0-4095"))
        .await
        .expect(202);
    srv.put_bytes(&with_query(&r.location(), "digest", &digest), Vec::new())
        .await
        .expect(201);
    for repo in [REPO, "second/repo", "third/repo"] {
        let got = srv
            .get(&format!("/v2/{repo}/blobs/{digest}"))
            .await
            .expect(200);
        assert!(got.body.as_ref() == data.as_slice(), "{repo}");
    }
}

#[tokio::test]
async fn upload_status_is_204_with_range_and_location() {
    let srv = Server::start().await;
    let location = srv.start_upload(REPO).await;
    let st = srv.get(&location).await.expect(204);
    assert!(st.header("location").is_some(), "{st}");
    assert!(st.header("range").is_some(), "{st}");
    let r = srv
        .patch(&location, &pattern(1234, 7), Some("0-1233"))
        .await
        .expect(202);
    let st = srv.get(&r.location()).await.expect(204);
    assert_eq!(st.must_header("range"), "0-1233");
    assert!(
        st.must_header("location").contains("/blobs/uploads/"),
        "{st}"
    );
    assert!(st.body.is_empty());
}

#[tokio::test]
async fn cancelled_upload_is_unknown_afterwards() {
    let srv = Server::start().await;
    let data = pattern(100, 8);
    let location = srv.start_upload(REPO).await;
    srv.patch(&location, &data, Some("0-99")).await.expect(202);
    srv.delete(&location).await.expect(204);
    srv.get(&location)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    srv.patch(&location, &data, Some("100-199"))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    srv.put_bytes(&with_query(&location, "digest", &sha256(&data)), Vec::new())
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    srv.delete(&location)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn wrong_digest_is_refused_and_nothing_is_stored() {
    let srv = Server::start().await;
    let data = pattern(1500, 9);
    let claimed = sha256(b"something else entirely");

    // Single POST.
    srv.post(
        &format!("/v2/{REPO}/blobs/uploads/?digest={claimed}"),
        data.clone(),
    )
    .await
    .expect_error(400, "DIGEST_INVALID");

    // POST then PUT with the body.
    let location = srv.start_upload(REPO).await;
    srv.put_bytes(&with_query(&location, "digest", &claimed), data.clone())
        .await
        .expect_error(400, "DIGEST_INVALID");

    // Chunks, then a PUT naming the wrong digest.
    let location = srv.start_upload(REPO).await;
    let r = srv
        .patch(&location, &data, Some("0-1499"))
        .await
        .expect(202);
    srv.put_bytes(&with_query(&r.location(), "digest", &claimed), Vec::new())
        .await
        .expect_error(400, "DIGEST_INVALID");

    // Neither the claimed digest nor the real one became readable.
    for d in [&claimed, &sha256(&data)] {
        srv.get(&format!("/v2/{REPO}/blobs/{d}"))
            .await
            .expect_error(404, "BLOB_UNKNOWN");
        srv.head(&format!("/v2/{REPO}/blobs/{d}")).await.expect(404);
    }
}

#[tokio::test]
async fn sha512_digests_are_supported() {
    let srv = Server::start().await;
    let data = pattern(3333, 10);
    let digest = sha512(&data);

    let r = srv
        .post(
            &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
            data.clone(),
        )
        .await
        .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
    assert_eq!(got.must_header("docker-content-digest"), digest);

    // Chunked, in another repository.
    let location = srv.start_upload("other/app").await;
    let r = srv
        .patch(&location, &data[..2000], Some("0-1999"))
        .await
        .expect(202);
    let r = srv
        .patch(&r.location(), &data[2000..], Some("2000-3332"))
        .await
        .expect(202);
    let r = srv
        .put_bytes(&with_query(&r.location(), "digest", &digest), Vec::new())
        .await
        .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());

    // A sha512 digest that does not match is refused like a sha256 one.
    srv.post(
        &format!("/v2/{REPO}/blobs/uploads/?digest={}", sha512(b"nope")),
        data.clone(),
    )
    .await
    .expect_error(400, "DIGEST_INVALID");
}

#[tokio::test]
async fn unsupported_digest_algorithm_is_digest_invalid() {
    let srv = Server::start().await;
    let data = b"hello".to_vec();
    let md5 = "md5:5d41402abc4b2a76b9719d911017c592";

    srv.post(
        &format!("/v2/{REPO}/blobs/uploads/?digest={md5}"),
        data.clone(),
    )
    .await
    .expect_error(400, "DIGEST_INVALID");

    // The closing PUT is refused, and the session is still usable.
    let location = srv.start_upload(REPO).await;
    let r = srv.patch(&location, &data, Some("0-4")).await.expect(202);
    srv.put_bytes(&with_query(&r.location(), "digest", md5), Vec::new())
        .await
        .expect_error(400, "DIGEST_INVALID");
    srv.put_bytes(
        &with_query(&r.location(), "digest", &sha256(&data)),
        Vec::new(),
    )
    .await
    .expect(201);

    // Malformed digests in other places.
    for bad in [md5, "sha256:abc", "sha256:", "nocolon"] {
        let r = srv.get(&format!("/v2/{REPO}/blobs/{bad}")).await;
        assert!(r.status == 400 || r.status == 404, "GET blob {bad}: {r}");
        let codes = r.error_codes();
        assert!(
            codes
                .iter()
                .any(|c| c == "DIGEST_INVALID" || c == "BLOB_UNKNOWN"),
            "GET blob {bad}: {r}"
        );
    }
    srv.put_bytes(
        &with_query(&srv.start_upload(REPO).await, "digest", "sha256:xyz"),
        data.clone(),
    )
    .await
    .expect_error(400, "DIGEST_INVALID");
}

#[tokio::test]
async fn closing_put_without_digest_is_refused() {
    let srv = Server::start().await;
    let location = srv.start_upload(REPO).await;
    srv.put_bytes(&location, b"abc".to_vec())
        .await
        .expect_error(400, "DIGEST_INVALID");
}

#[tokio::test]
async fn upload_of_another_repository_is_unknown() {
    let srv = Server::start().await;
    let data = pattern(64, 11);
    let location = srv.start_upload("team/one").await;
    let r = srv
        .patch(&location, &data[..32], Some("0-31"))
        .await
        .expect(202);
    let location = r.location();
    let stolen = location.replace("/v2/team/one/", "/v2/team/two/");
    assert_ne!(stolen, location);

    srv.get(&stolen)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    srv.patch(&stolen, &data[32..], Some("32-63"))
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    srv.put_bytes(
        &with_query(&stolen, "digest", &sha256(&data)),
        data[32..].to_vec(),
    )
    .await
    .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    srv.delete(&stolen)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");

    // The owner's session is untouched.
    let st = srv.get(&location).await.expect(204);
    assert_eq!(st.must_header("range"), "0-31");
    let r = srv
        .put_bytes(
            &with_query(&location, "digest", &sha256(&data)),
            data[32..].to_vec(),
        )
        .await
        .expect(201);
    srv.get(&r.location()).await.expect(200);
    srv.get(&format!("/v2/team/two/blobs/{}", sha256(&data)))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
}

#[tokio::test]
async fn empty_blob_can_be_uploaded_and_read() {
    let srv = Server::start().await;
    let digest = sha256(b"");
    let location = srv.start_upload(REPO).await;
    srv.put_bytes(&with_query(&location, "digest", &digest), Vec::new())
        .await
        .expect(201);
    let r = srv
        .get(&format!("/v2/{REPO}/blobs/{digest}"))
        .await
        .expect(200);
    assert!(r.body.is_empty());
    assert_eq!(r.must_header("content-length"), "0");
    assert_eq!(r.must_header("docker-content-digest"), digest);
}

// ---- blob reads -----------------------------------------------------------------------

#[tokio::test]
async fn blob_get_and_head() {
    let srv = Server::start().await;
    let data = pattern(10_000, 12);
    let digest = srv.push_blob(REPO, &data).await;
    let path = format!("/v2/{REPO}/blobs/{digest}");

    let r = srv.get(&path).await.expect(200);
    assert_eq!(r.body.as_ref(), data.as_slice());
    assert_eq!(r.must_header("content-length"), "10000");
    assert_eq!(r.must_header("docker-content-digest"), digest);
    assert_eq!(sha256(&r.body), digest);

    let r = srv.head(&path).await.expect(200);
    assert!(r.body.is_empty());
    assert_eq!(r.must_header("content-length"), "10000");
    assert_eq!(r.must_header("docker-content-digest"), digest);
}

#[tokio::test]
async fn blob_range_requests() {
    let srv = Server::start().await;
    let data = pattern(1000, 13);
    let digest = srv.push_blob(REPO, &data).await;
    let path = format!("/v2/{REPO}/blobs/{digest}");
    let ranged = |range: &'static str| srv.request(Method::GET, &path).header("range", range);

    let r = srv.send(ranged("bytes=10-19")).await.expect(206);
    assert_eq!(r.body.as_ref(), &data[10..20]);
    assert_eq!(r.must_header("content-range"), "bytes 10-19/1000");
    assert_eq!(r.must_header("content-length"), "10");

    let r = srv.send(ranged("bytes=995-")).await.expect(206);
    assert_eq!(r.body.as_ref(), &data[995..]);
    assert_eq!(r.must_header("content-range"), "bytes 995-999/1000");

    let r = srv.send(ranged("bytes=-5")).await.expect(206);
    assert_eq!(r.body.as_ref(), &data[995..]);
    assert_eq!(r.must_header("content-range"), "bytes 995-999/1000");

    // An end past the blob is clamped.
    let r = srv.send(ranged("bytes=900-5000")).await.expect(206);
    assert_eq!(r.body.as_ref(), &data[900..]);
    assert_eq!(r.must_header("content-range"), "bytes 900-999/1000");

    for bad in ["bytes=1000-1010", "bytes=5000-"] {
        let r = srv.send(ranged(bad)).await.expect(416);
        assert_eq!(r.must_header("content-range"), "bytes */1000", "{bad}");
    }
}

#[tokio::test]
async fn unknown_blob_is_blob_unknown() {
    let srv = Server::start().await;
    let digest = srv.push_blob(REPO, b"only in library/app").await;
    let missing = sha256(b"never pushed");
    srv.get(&format!("/v2/{REPO}/blobs/{missing}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    let r = srv
        .head(&format!("/v2/{REPO}/blobs/{missing}"))
        .await
        .expect(404);
    assert!(r.body.is_empty());
    // A blob is served only by repositories that hold it.
    srv.get(&format!("/v2/other/app/blobs/{digest}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
}

// ---- cross-repository mounts ----------------------------------------------------------------

#[tokio::test]
async fn cross_repo_mount_answers_201() {
    let srv = Server::start().await;
    let data = pattern(2048, 14);
    let digest = srv.push_blob("src/app", &data).await;
    let r = srv
        .send(
            srv.request(
                Method::POST,
                &format!("/v2/dst/app/blobs/uploads/?mount={digest}&from=src/app"),
            )
            .header("content-length", "0"),
        )
        .await
        .expect(201);
    let location = r.location();
    assert!(
        location.ends_with(&format!("/v2/dst/app/blobs/{digest}")),
        "{location}"
    );
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let got = srv.get(&location).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
}

#[tokio::test]
async fn mount_falls_back_to_an_upload_when_from_lacks_the_blob() {
    let srv = Server::start().await;
    let data = pattern(512, 15);
    let digest = srv.push_blob("has/it", &data).await;
    srv.push_blob("lacks/it", b"something else").await;
    let r = srv
        .send(
            srv.request(
                Method::POST,
                &format!("/v2/dst/app/blobs/uploads/?mount={digest}&from=lacks/it"),
            )
            .header("content-length", "0"),
        )
        .await
        .expect(202);
    let location = r.location();
    assert!(
        location.contains("/v2/dst/app/blobs/uploads/"),
        "{location}"
    );
    srv.get(&format!("/v2/dst/app/blobs/{digest}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    // The session it opened is a real one.
    let r = srv
        .put_bytes(&with_query(&location, "digest", &digest), data.clone())
        .await
        .expect(201);
    srv.get(&r.location()).await.expect(200);

    // A digest nobody has falls back too.
    let nobody = sha256(b"nobody has this");
    srv.send(
        srv.request(
            Method::POST,
            &format!("/v2/dst/app/blobs/uploads/?mount={nobody}&from=has/it"),
        )
        .header("content-length", "0"),
    )
    .await
    .expect(202);
}

#[tokio::test]
async fn mount_without_from_of_a_known_blob() {
    let srv = Server::start().await;
    let data = pattern(300, 16);
    let digest = srv.push_blob("somewhere/else", &data).await;
    let r = srv
        .send(
            srv.request(
                Method::POST,
                &format!("/v2/dst/app/blobs/uploads/?mount={digest}"),
            )
            .header("content-length", "0"),
        )
        .await
        .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
}

// ---- manifests ------------------------------------------------------------------------------

/// An OCI manifest as a client might format it: indented, keys in an unusual
/// order, a trailing newline. The registry must keep these bytes.
fn hand_written_manifest(config: &Desc, layer: &Desc) -> Vec<u8> {
    format!(
        "{{\n   \"layers\" : [ {{ \"size\": {}, \"digest\": \"{}\", \"mediaType\": \"{}\" }} ],\n   \"config\" : {{ \"size\": {}, \"digest\": \"{}\", \"mediaType\": \"{}\" }},\n   \"mediaType\" : \"{OCI_MANIFEST}\",\n   \"schemaVersion\" : 2\n}}\n",
        layer.size, layer.digest, layer.media_type, config.size, config.digest, config.media_type
    )
    .into_bytes()
}

async fn push_config_and_layer(srv: &Server, repo: &str, seed: u8) -> (Desc, Desc) {
    let config = to_bytes(&json!({ "architecture": "arm64", "os": "linux", "seed": seed }));
    let layer = pattern(900, seed);
    srv.push_blob(repo, &config).await;
    srv.push_blob(repo, &layer).await;
    (Desc::of(OCI_CONFIG, &config), Desc::of(OCI_LAYER, &layer))
}

#[tokio::test]
async fn manifest_put_get_head_by_tag_and_digest() {
    let srv = Server::start().await;
    let (config, layer) = push_config_and_layer(&srv, REPO, 20).await;
    let body = hand_written_manifest(&config, &layer);
    let digest = sha256(&body);

    let r = srv
        .push_manifest(REPO, "v1.0", OCI_MANIFEST, &body)
        .await
        .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let location = r.location();
    assert!(
        location.contains(&format!("/v2/{REPO}/manifests/")),
        "{location}"
    );
    srv.get(&location).await.expect(200);

    for reference in ["v1.0", digest.as_str()] {
        let path = format!("/v2/{REPO}/manifests/{reference}");
        let r = srv
            .send(
                srv.request(Method::GET, &path)
                    .header("accept", OCI_MANIFEST),
            )
            .await
            .expect(200);
        assert_eq!(
            r.body.as_ref(),
            body.as_slice(),
            "{reference}: bytes differ"
        );
        assert_eq!(r.must_header("content-type"), OCI_MANIFEST);
        assert_eq!(r.must_header("docker-content-digest"), digest);
        assert_eq!(r.must_header("content-length"), body.len().to_string());

        let r = srv.head(&path).await.expect(200);
        assert!(r.body.is_empty());
        assert_eq!(r.must_header("content-type"), OCI_MANIFEST);
        assert_eq!(r.must_header("docker-content-digest"), digest);
        assert_eq!(r.must_header("content-length"), body.len().to_string());
    }
}

#[tokio::test]
async fn manifest_put_by_digest() {
    let srv = Server::start().await;
    let (config, layer) = push_config_and_layer(&srv, REPO, 21).await;
    let body = to_bytes(&image_manifest(OCI_MANIFEST, &config, &[layer]));
    let digest = sha256(&body);

    // A digest that is not the body's.
    let wrong = sha256(b"another manifest");
    srv.push_manifest(REPO, &wrong, OCI_MANIFEST, &body)
        .await
        .expect_error(400, "DIGEST_INVALID");
    srv.get(&format!("/v2/{REPO}/manifests/{wrong}"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");

    // The right one.
    let r = srv
        .push_manifest(REPO, &digest, OCI_MANIFEST, &body)
        .await
        .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let got = srv
        .get(&format!("/v2/{REPO}/manifests/{digest}"))
        .await
        .expect(200);
    assert_eq!(got.body.as_ref(), body.as_slice());
    // No tag was made.
    let tags = srv
        .get(&format!("/v2/{REPO}/tags/list"))
        .await
        .expect(200)
        .json();
    assert!(tag_list(&tags).is_empty(), "{tags}");

    // By a sha512 digest: the registry answers with that same digest.
    let d512 = sha512(&body);
    let r = srv
        .push_manifest(REPO, &d512, OCI_MANIFEST, &body)
        .await
        .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), d512);
    let got = srv
        .get(&format!("/v2/{REPO}/manifests/{d512}"))
        .await
        .expect(200);
    assert_eq!(got.body.as_ref(), body.as_slice());
}

#[tokio::test]
async fn manifest_referencing_a_missing_blob_is_manifest_blob_unknown() {
    let srv = Server::start().await;
    let (config, layer) = push_config_and_layer(&srv, REPO, 22).await;
    let missing = Desc::of(OCI_LAYER, b"a layer never pushed");

    let body = to_bytes(&image_manifest(
        OCI_MANIFEST,
        &config,
        &[layer.clone(), missing.clone()],
    ));
    let err = srv
        .push_manifest(REPO, "v1", OCI_MANIFEST, &body)
        .await
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(err["detail"]["digest"], missing.digest.as_str(), "{err}");

    let missing_config = Desc::of(OCI_CONFIG, b"{\"never\":\"pushed\"}");
    let body = to_bytes(&image_manifest(OCI_MANIFEST, &missing_config, &[layer]));
    srv.push_manifest(REPO, "v1", OCI_MANIFEST, &body)
        .await
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");

    srv.get(&format!("/v2/{REPO}/manifests/v1"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn manifest_cannot_use_blobs_of_another_repository() {
    let srv = Server::start().await;
    let (config, layer) = push_config_and_layer(&srv, "owner/repo", 28).await;
    let body = to_bytes(&image_manifest(OCI_MANIFEST, &config, &[layer]));
    srv.push_manifest("stranger/repo", "v1", OCI_MANIFEST, &body)
        .await
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    srv.push_manifest_ok("owner/repo", "v1", OCI_MANIFEST, &body)
        .await;
}

#[tokio::test]
async fn retagging_moves_the_tag() {
    let srv = Server::start().await;
    let first = srv.push_image(REPO, "latest", 29).await;
    let second = srv.push_image(REPO, "latest", 30).await;
    assert_ne!(first.digest, second.digest);
    let r = srv
        .get(&format!("/v2/{REPO}/manifests/latest"))
        .await
        .expect(200);
    assert_eq!(r.must_header("docker-content-digest"), second.digest);
    assert_eq!(r.body.as_ref(), second.manifest.as_slice());
    // The first manifest is still there by digest; the tag is listed once.
    srv.get(&format!("/v2/{REPO}/manifests/{}", first.digest))
        .await
        .expect(200);
    let v = srv
        .get(&format!("/v2/{REPO}/tags/list"))
        .await
        .expect(200)
        .json();
    assert_eq!(tag_list(&v), ["latest"]);
}

#[tokio::test]
async fn index_referencing_a_missing_manifest_is_manifest_blob_unknown() {
    let srv = Server::start().await;
    let image = srv.push_image(REPO, "amd64", 23).await;
    let missing = Desc::of(OCI_MANIFEST, b"{\"schemaVersion\":2}");
    let index = |children: Vec<Value>| {
        to_bytes(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": children,
        }))
    };
    let mut child = image.desc().json();
    child["platform"] = json!({ "os": "linux", "architecture": "amd64" });
    let mut gone = missing.json();
    gone["platform"] = json!({ "os": "linux", "architecture": "arm64" });

    let body = index(vec![child.clone(), gone]);
    srv.push_manifest(REPO, "multi", OCI_INDEX, &body)
        .await
        .expect_error(400, "MANIFEST_BLOB_UNKNOWN");

    let body = index(vec![child]);
    let digest = srv.push_manifest_ok(REPO, "multi", OCI_INDEX, &body).await;
    let r = srv
        .get(&format!("/v2/{REPO}/manifests/multi"))
        .await
        .expect(200);
    assert_eq!(r.must_header("content-type"), OCI_INDEX);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    assert_eq!(r.body.as_ref(), body.as_slice());
}

#[tokio::test]
async fn docker_schema2_manifest_and_manifest_list_are_accepted() {
    let srv = Server::start().await;
    let config = to_bytes(&json!({ "architecture": "amd64", "os": "linux", "config": {} }));
    let layer = pattern(600, 24);
    srv.push_blob(REPO, &config).await;
    srv.push_blob(REPO, &layer).await;
    let manifest = to_bytes(&image_manifest(
        DOCKER_MANIFEST,
        &Desc::of(DOCKER_CONFIG, &config),
        &[Desc::of(DOCKER_LAYER, &layer)],
    ));
    let digest = srv
        .push_manifest_ok(REPO, "docker", DOCKER_MANIFEST, &manifest)
        .await;
    assert_eq!(digest, sha256(&manifest));
    let r = srv
        .get(&format!("/v2/{REPO}/manifests/docker"))
        .await
        .expect(200);
    assert_eq!(r.must_header("content-type"), DOCKER_MANIFEST);
    assert_eq!(r.body.as_ref(), manifest.as_slice());

    let list = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{
            "mediaType": DOCKER_MANIFEST,
            "digest": digest,
            "size": manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" },
        }],
    }));
    let list_digest = srv
        .push_manifest_ok(REPO, "docker-list", DOCKER_LIST, &list)
        .await;
    let r = srv
        .get(&format!("/v2/{REPO}/manifests/{list_digest}"))
        .await
        .expect(200);
    assert_eq!(r.must_header("content-type"), DOCKER_LIST);
    assert_eq!(r.body.as_ref(), list.as_slice());
}

#[tokio::test]
async fn docker_schema1_is_refused() {
    let srv = Server::start().await;
    let body = to_bytes(&json!({
        "schemaVersion": 1,
        "name": REPO,
        "tag": "old",
        "architecture": "amd64",
        "fsLayers": [{ "blobSum": sha256(b"layer") }],
        "history": [{ "v1Compatibility": "{}" }],
    }));
    for content_type in [
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.docker.distribution.manifest.v1+json",
    ] {
        srv.push_manifest(REPO, "old", content_type, &body)
            .await
            .expect_error(400, "MANIFEST_INVALID");
    }
    srv.get(&format!("/v2/{REPO}/manifests/old"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn invalid_manifest_is_manifest_invalid() {
    let srv = Server::start().await;
    for body in [
        &b"this is not json"[..],
        b"{\"schemaVersion\":2,",
        b"",
        b"[]",
        b"{}",
        b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":\"nope\"}",
    ] {
        srv.push_manifest(REPO, "bad", OCI_MANIFEST, body)
            .await
            .expect_error(400, "MANIFEST_INVALID");
    }
}

#[tokio::test]
async fn oversize_manifest_gets_413() {
    let srv = Server::start_with(|s| s.registry.max_manifest_bytes = 1024).await;
    let (config, layer) = push_config_and_layer(&srv, REPO, 25).await;
    let small = to_bytes(&image_manifest(
        OCI_MANIFEST,
        &config,
        std::slice::from_ref(&layer),
    ));
    assert!(small.len() < 1024);
    srv.push_manifest_ok(REPO, "small", OCI_MANIFEST, &small)
        .await;

    let mut big = image_manifest(OCI_MANIFEST, &config, &[layer]);
    big["annotations"] = json!({ "padding": "x".repeat(2000) });
    let big = to_bytes(&big);

    // With a Content-Length over the limit.
    let r = srv.push_manifest(REPO, "big", OCI_MANIFEST, &big).await;
    assert_eq!(r.status, 413, "{r}");
    assert!(
        r.error_codes()
            .iter()
            .all(|c| SPEC_ERROR_CODES.contains(&c.as_str())),
        "{r}"
    );

    // Streamed, without a Content-Length.
    let stream = futures::stream::iter(
        big.chunks(300)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let rb = srv
        .request(Method::PUT, &format!("/v2/{REPO}/manifests/big"))
        .header("content-type", OCI_MANIFEST)
        .body(reqwest::Body::wrap_stream(stream));
    let r = srv.send(rb).await;
    assert_eq!(r.status, 413, "{r}");

    srv.get(&format!("/v2/{REPO}/manifests/big"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn invalid_repository_name_is_name_invalid() {
    let srv = Server::start().await;
    let long = "a".repeat(256);
    for name in [
        "Upper/case",
        "a..b",
        "-lead",
        "trail-",
        "a//b",
        "sp ace",
        long.as_str(),
    ] {
        let name = name.replace(' ', "%20");
        srv.get(&format!("/v2/{name}/manifests/latest"))
            .await
            .expect_error(400, "NAME_INVALID");
        srv.get(&format!("/v2/{name}/tags/list"))
            .await
            .expect_error(400, "NAME_INVALID");
        srv.send(
            srv.request(Method::POST, &format!("/v2/{name}/blobs/uploads/"))
                .header("content-length", "0"),
        )
        .await
        .expect_error(400, "NAME_INVALID");
        srv.push_manifest(&name, "latest", OCI_MANIFEST, b"{}")
            .await
            .expect_error(400, "NAME_INVALID");
    }
}

#[tokio::test]
async fn invalid_tag_is_400() {
    let srv = Server::start().await;
    let image = srv.push_image(REPO, "ok", 26).await;
    let long = "t".repeat(129);
    for tag in ["-dash", ".dot", long.as_str()] {
        let r = srv
            .push_manifest(REPO, tag, OCI_MANIFEST, &image.manifest)
            .await;
        assert_eq!(r.status, 400, "tag {tag:?}: {r}");
        assert!(
            r.error_codes()
                .iter()
                .any(|c| SPEC_ERROR_CODES.contains(&c.as_str())),
            "tag {tag:?}: {r}"
        );
    }
    // The longest valid tag is fine.
    srv.push_manifest_ok(REPO, &"t".repeat(128), OCI_MANIFEST, &image.manifest)
        .await;
}

#[tokio::test]
async fn unknown_manifest_is_manifest_unknown() {
    let srv = Server::start().await;
    srv.push_image(REPO, "exists", 27).await;
    srv.get(&format!("/v2/{REPO}/manifests/nope"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    let d = sha256(b"no such manifest");
    srv.get(&format!("/v2/{REPO}/manifests/{d}"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    let r = srv
        .head(&format!("/v2/{REPO}/manifests/nope"))
        .await
        .expect(404);
    assert!(r.body.is_empty());
    // In a repository that does not exist at all.
    srv.get("/v2/no/such/repo/manifests/latest")
        .await
        .expect(404);
}

// ---- subject and referrers ------------------------------------------------------------------

const SBOM: &str = "application/vnd.example.sbom.v1";
const SIG_CONFIG: &str = "application/vnd.example.signature.config.v1+json";
const BUNDLE: &str = "application/vnd.example.bundle.v1";

/// The empty JSON blob `{}`, pushed, as artifacts use for config.
async fn push_empty_config(srv: &Server, repo: &str) -> Desc {
    let digest = srv.push_blob(repo, b"{}").await;
    assert_eq!(
        digest,
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    Desc::of(OCI_EMPTY, b"{}")
}

/// An artifact manifest (an image manifest with `artifactType`) about
/// `subject`.
fn artifact(
    artifact_type: Option<&str>,
    config: &Desc,
    subject: &Desc,
    annotations: Value,
) -> Vec<u8> {
    let mut m = image_manifest(OCI_MANIFEST, config, std::slice::from_ref(config));
    if let Some(t) = artifact_type {
        m["artifactType"] = json!(t);
    }
    m["subject"] = subject.json();
    m["annotations"] = annotations;
    to_bytes(&m)
}

/// An image manifest that is not pushed yet: the subject of referrers.
fn future_subject(config: &Desc) -> (Vec<u8>, Desc) {
    let body = to_bytes(&image_manifest(
        OCI_MANIFEST,
        config,
        std::slice::from_ref(config),
    ));
    let desc = Desc::of(OCI_MANIFEST, &body);
    (body, desc)
}

async fn referrers(srv: &Server, repo: &str, subject: &str, query: &str) -> (Resp, Value) {
    let r = srv
        .get(&format!("/v2/{repo}/referrers/{subject}{query}"))
        .await
        .expect(200);
    assert_eq!(r.must_header("content-type"), OCI_INDEX, "{r}");
    let v = r.json();
    assert_eq!(v["schemaVersion"], 2, "{v}");
    assert_eq!(v["mediaType"], OCI_INDEX, "{v}");
    assert!(v["manifests"].is_array(), "{v}");
    (r, v)
}

fn find<'a>(index: &'a Value, digest: &str) -> &'a Value {
    index["manifests"]
        .as_array()
        .and_then(|m| m.iter().find(|d| d["digest"] == digest))
        .unwrap_or_else(|| panic!("{digest} not listed in {index}"))
}

#[tokio::test]
async fn push_with_missing_subject_sets_oci_subject_and_is_listed() {
    let srv = Server::start().await;
    let empty = push_empty_config(&srv, REPO).await;
    let sig_config_bytes = br#"{"signature":"config"}"#;
    srv.push_blob(REPO, sig_config_bytes).await;
    let sig_config = Desc::of(SIG_CONFIG, sig_config_bytes);
    let (subject_body, subject) = future_subject(&empty);

    // An artifact with artifactType, pushed by digest before its subject.
    let sbom = artifact(
        Some(SBOM),
        &empty,
        &subject,
        json!({ "org.example.kind": "sbom", "org.opencontainers.image.created": "2024-01-01T00:00:00Z" }),
    );
    let sbom_digest = sha256(&sbom);
    let r = srv
        .push_manifest(REPO, &sbom_digest, OCI_MANIFEST, &sbom)
        .await
        .expect(201);
    assert_eq!(r.must_header("oci-subject"), subject.digest);

    // An image manifest without artifactType: its config's type stands in.
    let sig = artifact(
        None,
        &sig_config,
        &subject,
        json!({ "org.example.kind": "sig" }),
    );
    let sig_digest = sha256(&sig);
    let r = srv
        .push_manifest(REPO, "sig-tag", OCI_MANIFEST, &sig)
        .await
        .expect(201);
    assert_eq!(r.must_header("oci-subject"), subject.digest);

    // An index with a subject.
    let bundle = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "artifactType": BUNDLE,
        "manifests": [],
        "subject": subject.json(),
        "annotations": { "org.example.kind": "bundle" },
    }));
    let bundle_digest = sha256(&bundle);
    let r = srv
        .push_manifest(REPO, &bundle_digest, OCI_INDEX, &bundle)
        .await
        .expect(201);
    assert_eq!(r.must_header("oci-subject"), subject.digest);

    let check = |index: &Value| {
        assert_eq!(index["manifests"].as_array().unwrap().len(), 3, "{index}");
        let d = find(index, &sbom_digest);
        assert_eq!(d["mediaType"], OCI_MANIFEST);
        assert_eq!(d["artifactType"], SBOM);
        assert_eq!(d["size"], sbom.len());
        assert_eq!(
            d["annotations"],
            json!({ "org.example.kind": "sbom", "org.opencontainers.image.created": "2024-01-01T00:00:00Z" })
        );
        let d = find(index, &sig_digest);
        assert_eq!(d["mediaType"], OCI_MANIFEST);
        assert_eq!(d["artifactType"], SIG_CONFIG);
        assert_eq!(d["size"], sig.len());
        assert_eq!(d["annotations"], json!({ "org.example.kind": "sig" }));
        let d = find(index, &bundle_digest);
        assert_eq!(d["mediaType"], OCI_INDEX);
        assert_eq!(d["artifactType"], BUNDLE);
        assert_eq!(d["size"], bundle.len());
        assert_eq!(d["annotations"], json!({ "org.example.kind": "bundle" }));
    };
    let (r, index) = referrers(&srv, REPO, &subject.digest, "").await;
    assert!(r.header("oci-filters-applied").is_none(), "{r}");
    check(&index);

    // Once the subject itself is pushed, the earlier referrers stay listed.
    let r = srv
        .push_manifest(REPO, "subject", OCI_MANIFEST, &subject_body)
        .await
        .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), subject.digest);
    assert!(r.header("oci-subject").is_none(), "{r}");
    let (_, index) = referrers(&srv, REPO, &subject.digest, "").await;
    check(&index);

    // Referrers are per repository.
    let (_, other) = referrers(&srv, "other/repo", &subject.digest, "").await;
    assert_eq!(other["manifests"], json!([]));
}

#[tokio::test]
async fn referrers_filter_by_artifact_type() {
    let srv = Server::start().await;
    let empty = push_empty_config(&srv, REPO).await;
    let (_, subject) = future_subject(&empty);
    let sbom = artifact(Some(SBOM), &empty, &subject, json!({ "n": "1" }));
    let other = artifact(
        Some("application/vnd.example.other"),
        &empty,
        &subject,
        json!({ "n": "2" }),
    );
    let sbom_digest = srv
        .push_manifest_ok(REPO, &sha256(&sbom), OCI_MANIFEST, &sbom)
        .await;
    srv.push_manifest_ok(REPO, &sha256(&other), OCI_MANIFEST, &other)
        .await;

    let (r, index) = referrers(
        &srv,
        REPO,
        &subject.digest,
        "?artifactType=application%2Fvnd.example.sbom.v1",
    )
    .await;
    assert_eq!(r.must_header("oci-filters-applied"), "artifactType");
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["digest"], sbom_digest.as_str());
    assert_eq!(listed[0]["artifactType"], SBOM);

    // A filter nothing matches: still 200, empty, filter reported.
    let (r, index) = referrers(
        &srv,
        REPO,
        &subject.digest,
        "?artifactType=application/vnd.example.none",
    )
    .await;
    assert_eq!(r.must_header("oci-filters-applied"), "artifactType");
    assert_eq!(index["manifests"], json!([]));

    // An image manifest without artifactType is matched by its config's
    // media type.
    let sig_config_bytes = br#"{"signature":"config"}"#;
    srv.push_blob(REPO, sig_config_bytes).await;
    let sig = artifact(
        None,
        &Desc::of(SIG_CONFIG, sig_config_bytes),
        &subject,
        json!({ "n": "3" }),
    );
    let sig_digest = srv
        .push_manifest_ok(REPO, &sha256(&sig), OCI_MANIFEST, &sig)
        .await;
    let (r, index) = referrers(
        &srv,
        REPO,
        &subject.digest,
        // `+` must be escaped in a query, or it reads as a space.
        &format!("?artifactType={}", SIG_CONFIG.replace('+', "%2B")),
    )
    .await;
    assert_eq!(r.must_header("oci-filters-applied"), "artifactType");
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["digest"], sig_digest.as_str());

    let (r, index) = referrers(&srv, REPO, &subject.digest, "").await;
    assert!(r.header("oci-filters-applied").is_none());
    assert_eq!(index["manifests"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn deleted_referrer_is_no_longer_listed() {
    let srv = Server::start().await;
    let empty = push_empty_config(&srv, REPO).await;
    let (_, subject) = future_subject(&empty);
    let a = artifact(Some(SBOM), &empty, &subject, json!({ "n": "a" }));
    let b = artifact(Some(SBOM), &empty, &subject, json!({ "n": "b" }));
    let a = srv
        .push_manifest_ok(REPO, &sha256(&a), OCI_MANIFEST, &a)
        .await;
    let b = srv
        .push_manifest_ok(REPO, &sha256(&b), OCI_MANIFEST, &b)
        .await;
    srv.delete(&format!("/v2/{REPO}/manifests/{a}"))
        .await
        .expect(202);
    let (_, index) = referrers(&srv, REPO, &subject.digest, "").await;
    let listed = index["manifests"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["digest"], b.as_str());
}

#[tokio::test]
async fn referrers_of_an_unknown_digest_is_an_empty_200() {
    let srv = Server::start().await;
    srv.push_image(REPO, "v1", 30).await;
    let (_, index) = referrers(&srv, REPO, &sha256(b"no such manifest"), "").await;
    assert_eq!(index["manifests"], json!([]));
    let (_, index) = referrers(&srv, REPO, &sha512(b"no such manifest"), "").await;
    assert_eq!(index["manifests"], json!([]));
    // An invalid digest is a bad request, not a 404.
    let r = srv
        .get(&format!("/v2/{REPO}/referrers/sha256:nothex"))
        .await;
    assert_eq!(r.status, 400, "{r}");
    let r = srv.get(&format!("/v2/{REPO}/referrers/latest")).await;
    assert_eq!(r.status, 400, "{r}");
}

#[tokio::test]
async fn referrers_paging_follows_the_link_header() {
    let srv = Server::start().await;
    let empty = push_empty_config(&srv, REPO).await;
    let (_, subject) = future_subject(&empty);
    let mut pushed = BTreeSet::new();
    for i in 0..3 {
        let m = artifact(Some(SBOM), &empty, &subject, json!({ "i": i.to_string() }));
        pushed.insert(
            srv.push_manifest_ok(REPO, &sha256(&m), OCI_MANIFEST, &m)
                .await,
        );
    }

    let mut seen = Vec::new();
    let mut next = Some(format!("/v2/{REPO}/referrers/{}?n=1", subject.digest));
    let mut pages = 0;
    while let Some(url) = next {
        pages += 1;
        assert!(pages <= 10, "the Link chain does not end");
        let r = srv.get(&url).await.expect(200);
        assert_eq!(r.must_header("content-type"), OCI_INDEX);
        let index = r.json();
        let listed = index["manifests"].as_array().unwrap();
        assert!(listed.len() <= 1, "n=1 gave {index}");
        seen.extend(
            listed
                .iter()
                .map(|d| d["digest"].as_str().unwrap().to_owned()),
        );
        next = r.next_link();
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), pushed);

    // Paging keeps the filter.
    let r = srv
        .get(&format!(
            "/v2/{REPO}/referrers/{}?n=1&artifactType={SBOM}",
            subject.digest
        ))
        .await
        .expect(200);
    assert_eq!(r.must_header("oci-filters-applied"), "artifactType");
    let link = r.next_link().expect("a Link to the second page");
    assert!(link.contains("artifactType="), "{link}");
    let r = srv.get(&link).await.expect(200);
    assert_eq!(r.must_header("oci-filters-applied"), "artifactType");
    assert_eq!(r.json()["manifests"].as_array().unwrap().len(), 1);
}

// ---- tags and catalog ------------------------------------------------------------------------

fn tag_list(v: &Value) -> Vec<String> {
    v["tags"]
        .as_array()
        .map(|t| t.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

async fn tag_all(srv: &Server, repo: &str, tags: &[&str]) {
    let image = srv.push_image(repo, tags[0], 40).await;
    for tag in &tags[1..] {
        srv.push_manifest_ok(repo, tag, OCI_MANIFEST, &image.manifest)
            .await;
    }
}

#[tokio::test]
async fn tags_list_in_lexical_order() {
    let srv = Server::start().await;
    tag_all(
        &srv,
        REPO,
        &[
            "v1.2", "latest", "1.0", "v1.10", "beta-2", "alpha", "beta-10",
        ],
    )
    .await;
    let r = srv.get(&format!("/v2/{REPO}/tags/list")).await.expect(200);
    assert!(
        r.must_header("content-type")
            .starts_with("application/json"),
        "{r}"
    );
    let v = r.json();
    assert_eq!(v["name"], REPO);
    assert_eq!(
        tag_list(&v),
        [
            "1.0", "alpha", "beta-10", "beta-2", "latest", "v1.10", "v1.2"
        ]
    );
    assert!(r.next_link().is_none());
}

/// The spec: "the tags MUST be in lexical order (i.e. case-insensitive
/// alphanumeric order)".
#[tokio::test]
async fn tags_list_order_is_case_insensitive() {
    let srv = Server::start().await;
    tag_all(&srv, REPO, &["Beta", "alpha", "Gamma", "delta"]).await;
    let v = srv
        .get(&format!("/v2/{REPO}/tags/list"))
        .await
        .expect(200)
        .json();
    assert_eq!(tag_list(&v), ["alpha", "Beta", "delta", "Gamma"]);
}

#[tokio::test]
async fn tags_paging_with_n_last_and_link() {
    let srv = Server::start().await;
    tag_all(&srv, REPO, &["c1", "a2", "b1", "a1", "b2"]).await;

    let r = srv
        .get(&format!("/v2/{REPO}/tags/list?n=2"))
        .await
        .expect(200);
    assert_eq!(tag_list(&r.json()), ["a1", "a2"]);
    let mut all = tag_list(&r.json());
    let mut next = r.next_link();
    assert!(next.is_some(), "no Link header on a partial page: {r}");
    let mut pages = 1;
    while let Some(url) = next {
        pages += 1;
        assert!(pages <= 10, "the Link chain does not end");
        let r = srv.get(&url).await.expect(200);
        let page = tag_list(&r.json());
        assert!(!page.is_empty() && page.len() <= 2, "{r}");
        all.extend(page);
        next = r.next_link();
    }
    assert_eq!(all, ["a1", "a2", "b1", "b2", "c1"]);

    // `last` alone, and with `n`.
    let v = srv
        .get(&format!("/v2/{REPO}/tags/list?last=a2"))
        .await
        .expect(200)
        .json();
    assert_eq!(tag_list(&v), ["b1", "b2", "c1"]);
    let r = srv
        .get(&format!("/v2/{REPO}/tags/list?n=2&last=b1"))
        .await
        .expect(200);
    assert_eq!(tag_list(&r.json()), ["b2", "c1"]);
    // n larger than what is left: everything, and no Link.
    let r = srv
        .get(&format!("/v2/{REPO}/tags/list?n=10"))
        .await
        .expect(200);
    assert_eq!(tag_list(&r.json()).len(), 5);
    assert!(r.header("link").is_none(), "{r}");
    // n exactly what there is.
    let r = srv
        .get(&format!("/v2/{REPO}/tags/list?n=3&last=a2"))
        .await
        .expect(200);
    assert_eq!(tag_list(&r.json()), ["b1", "b2", "c1"]);
}

#[tokio::test]
async fn tags_n_zero_is_an_empty_list_without_link() {
    let srv = Server::start().await;
    tag_all(&srv, REPO, &["a", "b"]).await;
    let r = srv
        .get(&format!("/v2/{REPO}/tags/list?n=0"))
        .await
        .expect(200);
    let v = r.json();
    assert_eq!(v["name"], REPO);
    assert!(v["tags"].is_array(), "{v}");
    assert!(tag_list(&v).is_empty(), "{v}");
    assert!(r.header("link").is_none(), "{r}");
}

#[tokio::test]
async fn tags_of_an_unknown_repository_is_name_unknown() {
    let srv = Server::start().await;
    srv.get("/v2/no/such/repo/tags/list")
        .await
        .expect_error(404, "NAME_UNKNOWN");
}

#[tokio::test]
async fn catalog_lists_and_pages() {
    let srv = Server::start().await;
    for (i, repo) in ["zeta", "alpha/one", "mid/two"].into_iter().enumerate() {
        srv.push_image(repo, "latest", 50 + i as u8).await;
    }
    let r = srv.get("/v2/_catalog").await.expect(200);
    assert_eq!(
        r.json()["repositories"],
        json!(["alpha/one", "mid/two", "zeta"])
    );

    let mut seen = Vec::new();
    let mut next = Some("/v2/_catalog?n=1".to_owned());
    let mut pages = 0;
    while let Some(url) = next {
        pages += 1;
        assert!(pages <= 10, "the Link chain does not end");
        let r = srv.get(&url).await.expect(200);
        let repos = r.json()["repositories"].as_array().unwrap().clone();
        assert!(repos.len() <= 1, "{r}");
        seen.extend(repos.into_iter().map(|v| v.as_str().unwrap().to_owned()));
        next = r.next_link();
    }
    assert_eq!(seen, ["alpha/one", "mid/two", "zeta"]);

    let r = srv.get("/v2/_catalog?n=2&last=alpha/one").await.expect(200);
    assert_eq!(r.json()["repositories"], json!(["mid/two", "zeta"]));
    let r = srv.get("/v2/_catalog?n=0").await.expect(200);
    assert_eq!(r.json()["repositories"], json!([]));
    assert!(r.header("link").is_none());
}

// ---- deletes --------------------------------------------------------------------------------

#[tokio::test]
async fn delete_manifest_by_digest_removes_it_and_its_tags() {
    let srv = Server::start().await;
    let image = srv.push_image(REPO, "v1", 60).await;
    srv.push_manifest_ok(REPO, "v2", OCI_MANIFEST, &image.manifest)
        .await;
    let keep = srv.push_image(REPO, "keep", 61).await;

    srv.delete(&format!("/v2/{REPO}/manifests/{}", image.digest))
        .await
        .expect(202);
    srv.get(&format!("/v2/{REPO}/manifests/{}", image.digest))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    srv.head(&format!("/v2/{REPO}/manifests/{}", image.digest))
        .await
        .expect(404);
    for tag in ["v1", "v2"] {
        srv.get(&format!("/v2/{REPO}/manifests/{tag}"))
            .await
            .expect_error(404, "MANIFEST_UNKNOWN");
    }
    let v = srv
        .get(&format!("/v2/{REPO}/tags/list"))
        .await
        .expect(200)
        .json();
    assert_eq!(tag_list(&v), ["keep"]);
    srv.get(&format!("/v2/{REPO}/manifests/{}", keep.digest))
        .await
        .expect(200);

    // Again: it is gone.
    srv.delete(&format!("/v2/{REPO}/manifests/{}", image.digest))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    // In a repository that does not exist.
    srv.delete(&format!("/v2/no/such/manifests/{}", image.digest))
        .await
        .expect(404);
}

#[tokio::test]
async fn delete_tag_keeps_the_manifest() {
    let srv = Server::start().await;
    let image = srv.push_image(REPO, "v1", 62).await;
    srv.push_manifest_ok(REPO, "v2", OCI_MANIFEST, &image.manifest)
        .await;

    srv.delete(&format!("/v2/{REPO}/manifests/v1"))
        .await
        .expect(202);
    srv.get(&format!("/v2/{REPO}/manifests/v1"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    let r = srv
        .get(&format!("/v2/{REPO}/manifests/{}", image.digest))
        .await
        .expect(200);
    assert_eq!(r.body.as_ref(), image.manifest.as_slice());
    srv.get(&format!("/v2/{REPO}/manifests/v2"))
        .await
        .expect(200);
    let v = srv
        .get(&format!("/v2/{REPO}/tags/list"))
        .await
        .expect(200)
        .json();
    assert_eq!(tag_list(&v), ["v2"]);

    srv.delete(&format!("/v2/{REPO}/manifests/v1"))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn delete_blob() {
    let srv = Server::start().await;
    let data = pattern(777, 63);
    let digest = srv.push_blob(REPO, &data).await;
    let path = format!("/v2/{REPO}/blobs/{digest}");
    srv.delete(&path).await.expect(202);
    srv.get(&path).await.expect_error(404, "BLOB_UNKNOWN");
    srv.head(&path).await.expect(404);
    srv.delete(&path).await.expect_error(404, "BLOB_UNKNOWN");
    // It can be pushed again.
    srv.push_blob(REPO, &data).await;
    srv.get(&path).await.expect(200);
}

#[tokio::test]
async fn deletes_disabled_answer_405_unsupported() {
    let srv = Server::start_with(|s| s.registry.delete_enabled = false).await;
    let image = srv.push_image(REPO, "v1", 64).await;
    srv.delete(&format!("/v2/{REPO}/manifests/{}", image.digest))
        .await
        .expect_error(405, "UNSUPPORTED");
    srv.delete(&format!("/v2/{REPO}/manifests/v1"))
        .await
        .expect_error(405, "UNSUPPORTED");
    srv.delete(&format!("/v2/{REPO}/blobs/{}", image.layer.digest))
        .await
        .expect_error(405, "UNSUPPORTED");
    // Everything is still there.
    srv.get(&format!("/v2/{REPO}/manifests/v1"))
        .await
        .expect(200);
    srv.get(&format!("/v2/{REPO}/blobs/{}", image.layer.digest))
        .await
        .expect(200);
}

// ---- bad input ----------------------------------------------------------------------------------

#[track_caller]
fn assert_not_5xx(what: &str, result: Result<Resp, String>) {
    match result {
        Ok(r) => assert!(r.status.as_u16() < 500, "{what}: server error {r}"),
        Err(e) => panic!("{what}: no HTTP answer: {e}"),
    }
}

#[tokio::test]
async fn bad_input_never_gets_a_5xx() {
    let srv = Server::start().await;
    let image = srv.push_image(REPO, "v1", 70).await;
    let upload = srv.start_upload(REPO).await;
    let blob = format!("/v2/{REPO}/blobs/{}", image.layer.digest);
    let long_name = "a/".repeat(200) + "a";
    let zero_uuid = "00000000-0000-0000-0000-000000000000";

    let gets = [
        "/v2/%ff/tags/list".to_owned(),
        "/v2/%00/tags/list".to_owned(),
        "/v2/a%2fb/tags/list".to_owned(),
        format!("/v2/{long_name}/tags/list"),
        format!("/v2/{REPO}/manifests/"),
        format!("/v2/{REPO}/manifests/%ff"),
        format!("/v2/{REPO}/manifests/sha256:"),
        format!("/v2/{REPO}/manifests/sha256:{}", "g".repeat(64)),
        format!("/v2/{REPO}/manifests/SHA256:{}", "a".repeat(64)),
        format!("/v2/{REPO}/blobs/"),
        format!("/v2/{REPO}/blobs/sha256:zzz"),
        format!("/v2/{REPO}/blobs/sha256:{}", "A".repeat(64)),
        format!("/v2/{REPO}/blobs/uploads/not-a-uuid"),
        format!("/v2/{REPO}/blobs/uploads/{zero_uuid}"),
        format!("/v2/{REPO}/blobs/uploads/..%2f..%2fetc"),
        format!("/v2/{REPO}/referrers/"),
        format!("/v2/{REPO}/referrers/nothing"),
        format!("/v2/{REPO}/unknown/endpoint"),
        format!("/v2/{REPO}/tags/list?n=abc"),
        format!("/v2/{REPO}/tags/list?n=1&n=2"),
        format!("/v2/{REPO}/tags/list?last=%ff"),
        format!("/v2/{REPO}/tags/list?n=1e3"),
        format!("/v2/{REPO}/tags/list?%zz=%zz&&&=&n"),
        "/v2/_catalog?n=&last=".to_owned(),
        "/v2/_catalog?last=%00".to_owned(),
        format!("/v2/{REPO}/referrers/{}?artifactType=%ff&n=x", image.digest),
    ];
    for path in &gets {
        assert_not_5xx(path, srv.try_send(srv.request(Method::GET, path)).await);
    }

    // Garbage ranges on a blob.
    for range in [
        "bytes=abc",
        "bytes=5-1",
        "bytes=-0",
        "bytes=-",
        "lines=0-1",
        "bytes=0-1,5-6",
        "bytes=0-18446744073709551615",
        "bytes=18446744073709551615-",
        "bytes=-18446744073709551615",
        "bytes=99999999999999999999-",
    ] {
        let rb = srv.request(Method::GET, &blob).header("range", range);
        assert_not_5xx(range, srv.try_send(rb).await);
    }

    // Requests with the wrong method, or odd bodies and parameters.
    let odd = vec![
        srv.request(Method::DELETE, "/v2/_catalog"),
        srv.request(Method::POST, &format!("/v2/{REPO}/tags/list")),
        srv.request(Method::PATCH, &blob),
        srv.request(Method::OPTIONS, &format!("/v2/{REPO}/manifests/v1")),
        srv.request(Method::from_bytes(b"PROPFIND").unwrap(), "/v2/"),
        srv.request(Method::POST, &format!("/v2/{REPO}/blobs/uploads/?digest=")),
        srv.request(Method::POST, &format!("/v2/{REPO}/blobs/uploads/?digest=sha256:"))
            .body("x"),
        srv.request(Method::POST, &format!("/v2/{REPO}/blobs/uploads/?mount=garbage&from={REPO}")),
        srv.request(
            Method::POST,
            &format!("/v2/{REPO}/blobs/uploads/?mount={}&from=BAD//name", image.layer.digest),
        ),
        srv.request(Method::POST, &format!("/v2/{REPO}/blobs/uploads/?mount=&from=")),
        srv.request(Method::PUT, &upload).body("no digest"),
        srv.request(Method::PUT, &with_query(&upload, "digest", "sha256:short")),
        srv.request(Method::PUT, &format!("/v2/{REPO}/manifests/v2"))
            .header("content-type", OCI_MANIFEST)
            .body(r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"x","digest":"sha256:bad","size":-1},"layers":[]}"#),
        srv.request(Method::PUT, &format!("/v2/{REPO}/manifests/v2"))
            .header("content-type", OCI_MANIFEST)
            .body(format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"md5:00","size":1}}}}"#,
                image.config.json()
            )),
        srv.request(Method::PUT, &format!("/v2/{REPO}/manifests/v2"))
            .header("content-type", OCI_INDEX)
            .body(r#"{"schemaVersion":2,"manifests":"not a list"}"#),
        srv.request(Method::PUT, &format!("/v2/{REPO}/manifests/v2"))
            .header("content-type", "text/plain")
            .body("null"),
        srv.request(Method::GET, &format!("/v2/{REPO}/manifests/v1"))
            .header("accept", "*/*;q=abc, ,,"),
    ];
    for (i, rb) in odd.into_iter().enumerate() {
        assert_not_5xx(&format!("odd request #{i}"), srv.try_send(rb).await);
    }

    // Requests reqwest would normalize or refuse to send. Those that are
    // valid HTTP reach the application and must be answered; malformed HTTP
    // may also just be dropped by the HTTP layer.
    let raws: [(&[u8], bool); 9] = [
        (b"GET /v2/a/../../etc/passwd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", true),
        (b"GET /v2/library/app/blobs/uploads/../../../x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", true),
        (b"GET /v2/library/app/./manifests/./v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", true),
        (b"PUT /v2/library/app/manifests/v2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 18446744073709551615\r\nConnection: close\r\n\r\n", true),
        (b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false),
        (b"GET http://elsewhere/v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false),
        (b"GET /v2/\xff\xfe/tags/list HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", false),
        (b"PATCH /v2/library/app/blobs/uploads/00000000-0000-0000-0000-000000000000 HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\nConnection: close\r\n\r\n", false),
        (b"GARBAGE\r\n\r\n", false),
    ];
    for (raw, must_answer) in raws {
        let what = String::from_utf8_lossy(raw)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned();
        match srv.raw(raw).await {
            Ok(Some(status)) => assert!(status < 500, "{what}: {status}"),
            Ok(None) => assert!(!must_answer, "{what}: connection closed without an answer"),
            Err(e) => panic!("{what}: {e}"),
        }
    }

    // The server is still fine.
    srv.get(&format!("/v2/{REPO}/manifests/v1"))
        .await
        .expect(200);
}

#[tokio::test]
async fn malformed_content_range_never_gets_a_5xx() {
    let srv = Server::start().await;
    let data = pattern(10, 71);
    let location = srv.start_upload(REPO).await;
    for range in [
        "abc",
        "5-3",
        "-1-3",
        "0-",
        "-",
        "",
        "bytes */10",
        "0-4",
        "0-99999999999999999999",
        "18446744073709551615-18446744073709551615",
        "0-18446744073709551615",
    ] {
        let r = srv
            .try_send(
                srv.request(Method::PATCH, &location)
                    .header("content-type", "application/octet-stream")
                    .header("content-range", range)
                    .body(data.clone()),
            )
            .await;
        match r {
            Ok(r) => assert!(
                r.status.is_client_error(),
                "Content-Range {range:?}: expected a 4xx, got {r}"
            ),
            Err(e) => panic!("Content-Range {range:?}: no HTTP answer: {e}"),
        }
    }
    // None of it was taken: the upload still completes from byte 0.
    srv.get(&location).await.expect(204);
    let r = srv.patch(&location, &data, Some("0-9")).await.expect(202);
    srv.put_bytes(
        &with_query(&r.location(), "digest", &sha256(&data)),
        Vec::new(),
    )
    .await
    .expect(201);
}

/// Bad paging parameters are client errors, and like every error body they
/// use a code from the spec's table.
#[tokio::test]
async fn bad_paging_parameters_are_4xx_with_spec_codes() {
    let srv = Server::start().await;
    let image = srv.push_image(REPO, "v1", 72).await;
    let bases = [
        format!("/v2/{REPO}/tags/list"),
        "/v2/_catalog".to_owned(),
        format!("/v2/{REPO}/referrers/{}", image.digest),
    ];
    for base in &bases {
        for n in ["-1", "abc", "99999999999999999999", "1.5"] {
            let path = format!("{base}?n={n}");
            let r = srv.get(&path).await;
            assert!(
                r.status == 200 || r.status == 400,
                "{path}: expected 200 or 400, got {r}"
            );
            if r.status == 400 {
                let codes = r.error_codes();
                assert!(!codes.is_empty(), "{path}: no JSON error: {r}");
                for code in codes {
                    assert!(
                        SPEC_ERROR_CODES.contains(&code.as_str()),
                        "{path}: error code {code} is not one of the spec's: {r}"
                    );
                }
            }
        }
        // The largest n is served (capped), not refused.
        srv.get(&format!("{base}?n=4294967295")).await.expect(200);
    }
}

// ---- restart ------------------------------------------------------------------------------------

#[tokio::test]
async fn upload_survives_a_restart() {
    let mut srv = Server::start().await;
    let before = srv.push_image(REPO, "before", 80).await;
    let data = pattern(3000, 81);
    let digest = sha256(&data);
    let location = srv.start_upload(REPO).await;
    let r = srv
        .patch(&location, &data[..1000], Some("0-999"))
        .await
        .expect(202);
    let r = srv
        .patch(&r.location(), &data[1000..2000], Some("1000-1999"))
        .await
        .expect(202);
    let location = r.location();
    assert!(
        !location.starts_with("http"),
        "an absolute Location would point at the old port: {location}"
    );

    srv.restart().await;

    let st = srv.get(&location).await.expect(204);
    assert_eq!(st.must_header("range"), "0-1999");
    // A chunk that does not continue it is still refused after the restart.
    srv.patch(&location, &data[..1000], Some("0-999"))
        .await
        .expect_error(416, "BLOB_UPLOAD_INVALID");
    let rb = srv
        .request(Method::PUT, &with_query(&location, "digest", &digest))
        .header("content-type", "application/octet-stream")
        .header("content-range", "2000-2999")
        .header("content-length", "1000")
        .body(data[2000..].to_vec());
    let r = srv.send(rb).await.expect(201);
    assert_eq!(r.must_header("docker-content-digest"), digest);
    let got = srv.get(&r.location()).await.expect(200);
    assert_eq!(got.body.as_ref(), data.as_slice());
    assert_eq!(sha256(&got.body), digest);

    // What was pushed before the restart is still served.
    let r = srv
        .get(&format!("/v2/{REPO}/manifests/before"))
        .await
        .expect(200);
    assert_eq!(r.body.as_ref(), before.manifest.as_slice());
    srv.get(&format!("/v2/{REPO}/blobs/{}", before.layer.digest))
        .await
        .expect(200);
}

#[tokio::test]
async fn upload_with_a_wrong_digest_after_a_restart_is_refused() {
    let mut srv = Server::start().await;
    let data = pattern(1000, 82);
    let location = srv.start_upload(REPO).await;
    let r = srv.patch(&location, &data, Some("0-999")).await.expect(202);
    let location = r.location();
    srv.restart().await;
    let claimed = sha256(b"not these bytes");
    srv.put_bytes(&with_query(&location, "digest", &claimed), Vec::new())
        .await
        .expect_error(400, "DIGEST_INVALID");
    srv.get(&format!("/v2/{REPO}/blobs/{claimed}"))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
}

// ---- blobs above the multipart part size, racing chunks ----------------------------
// Meaningful on every store; scripts/test runs them again on S3 (moto) with
// two replicas, where they check the multipart writes (S3 refuses parts under
// 5 MiB) and that a session is continued by whichever replica gets the request.

/// Bigger than S3's 8 MiB default part and not a multiple of it.
const MULTIPART_SIZE: usize = 19 * 1024 * 1024 + 4321;

#[tokio::test]
async fn multipart_sized_monolithic_upload_round_trips_and_a_wrong_digest_stores_nothing() {
    let srv = Server::start().await;
    let data = pattern(MULTIPART_SIZE, 31);
    let digest = sha256(&data);
    let claimed = sha256(b"not these bytes");
    srv.post(
        &format!("/v2/{REPO}/blobs/uploads/?digest={claimed}"),
        data.clone(),
    )
    .await
    .expect_error(400, "DIGEST_INVALID");
    assert_eq!(srv.stored_blob_size(&claimed).await, None);
    assert_eq!(srv.stored_blob_size(&digest).await, None);

    let r = srv
        .post(
            &format!("/v2/{REPO}/blobs/uploads/?digest={digest}"),
            data.clone(),
        )
        .await
        .expect(201);
    let got = srv.get(&r.location()).await.expect(200);
    assert!(got.body.as_ref() == data.as_slice(), "blob bytes differ");
    assert_eq!(
        srv.stored_blob_size(&digest).await,
        Some(MULTIPART_SIZE as u64)
    );
}

#[tokio::test]
async fn multipart_sized_chunked_upload_round_trips_and_a_wrong_digest_stores_nothing() {
    let srv = Server::start().await;
    let data = pattern(MULTIPART_SIZE, 32);
    let digest = sha256(&data);
    // 3 chunks (one larger than a part, one smaller), then an empty PUT: with
    // replicas, the chunks and the completion land on different servers.
    let bounds = [0, 9 * 1024 * 1024, 12 * 1024 * 1024, MULTIPART_SIZE];
    for (claimed, expect_ok) in [(sha256(b"other"), false), (digest.clone(), true)] {
        let mut location = srv.start_upload(REPO).await;
        for w in bounds.windows(2) {
            location = srv
                .patch(
                    &location,
                    &data[w[0]..w[1]],
                    Some(&format!("{}-{}", w[0], w[1] - 1)),
                )
                .await
                .expect(202)
                .location();
        }
        let r = srv
            .put_bytes(&with_query(&location, "digest", &claimed), Vec::new())
            .await;
        if !expect_ok {
            r.expect_error(400, "DIGEST_INVALID");
            assert_eq!(srv.stored_blob_size(&claimed).await, None);
            assert_eq!(srv.stored_blob_size(&digest).await, None);
            // The failed session is gone.
            srv.get(&location).await.expect(404);
            continue;
        }
        let r = r.expect(201);
        let got = srv.get(&r.location()).await.expect(200);
        assert!(got.body.as_ref() == data.as_slice(), "blob bytes differ");
        assert_eq!(
            srv.stored_blob_size(&digest).await,
            Some(MULTIPART_SIZE as u64)
        );
    }
}

#[tokio::test]
async fn racing_chunks_at_the_same_offset_one_wins_the_other_gets_416() {
    let srv = Server::start().await;
    let data = pattern(600_000, 33);
    let digest = sha256(&data);
    for _ in 0..3 {
        let location = srv.start_upload(REPO).await;
        let other = pattern(300_000, 34);
        let first = srv.patch(&location, &data[..300_000], Some("0-299999"));
        let second = srv.patch(&location, &other, Some("0-299999"));
        let (a, b) = tokio::join!(first, second);
        let mut statuses = [a.status.as_u16(), b.status.as_u16()];
        statuses.sort();
        assert_eq!(statuses, [202, 416], "racing chunks: {a} / {b}");
        let winner_is_first = a.status == 202;
        let st = srv.get(&location).await.expect(204);
        assert_eq!(st.must_header("range"), "0-299999");
        let r = srv
            .put_bytes(
                &with_query(&location, "digest", &digest),
                data[300_000..].to_vec(),
            )
            .await;
        if winner_is_first {
            let r = r.expect(201);
            let got = srv.get(&r.location()).await.expect(200);
            assert!(got.body.as_ref() == data.as_slice());
        } else {
            r.expect_error(400, "DIGEST_INVALID");
        }
    }
}

#[tokio::test]
async fn requests_take_turns_over_the_replicas() {
    let srv = Server::start().await;
    let wanted = match std::env::var("WHARF_TEST_S3_ENDPOINT") {
        Ok(_) => std::env::var("WHARF_TEST_REPLICAS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1usize),
        Err(_) => 1,
    };
    let bases = srv.replica_bases().to_vec();
    assert_eq!(bases.len(), wanted, "replicas: {bases:?}");
    // Consecutive URLs go to each replica in turn; every one answers.
    let urls: Vec<String> = (0..2 * wanted).map(|_| srv.url("/v2/")).collect();
    for (i, url) in urls.iter().enumerate() {
        assert!(
            url.starts_with(&bases[i % wanted]),
            "{url} is not on replica {i}"
        );
    }
    for _ in 0..wanted {
        srv.get("/v2/").await.expect(200);
    }
}
