//! Two servers on one catalog and one blob directory, as replicas behind a
//! load balancer: writes racing on the same blob, manifest, tag and upload
//! session all end well (no 5xx, nothing lost), and an upload session moves
//! freely between the servers. Meant for PostgreSQL (run with
//! `WHARF_TEST_POSTGRES_URL`, as `scripts/test` does); on SQLite the two
//! servers share the catalog file, which must hold as well.
//!
//! The blobs are where the settings put them: one local directory by
//! default (with `WHARF_TEST_S3_ENDPOINT`, one bucket). Replicas in
//! production use S3 (see the README): two processes appending different
//! bytes to one local session file at once is not something the filesystem
//! backend guards against, so the race below sends the same chunk to both;
//! what is under test here is the catalog deciding which append wins.

mod common;

use common::*;
use reqwest::Method;

const REPO: &str = "team/app";

/// The path of a Location, so it can be sent to the other server.
fn path_of(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => rest[rest.find('/').unwrap_or(rest.len())..].to_owned(),
        None => location.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_image_pushed_through_both_servers_at_once() {
    let a = Server::start().await;
    let b = a.start_sibling().await;
    let pushes = (0..8).map(|i| {
        let srv = if i % 2 == 0 { &a } else { &b };
        async move { srv.push_image(REPO, "latest", 42).await }
    });
    let images = futures::future::join_all(pushes).await;
    let digest = &images[0].digest;
    assert!(images.iter().all(|i| &i.digest == digest));

    // Different manifests racing for one tag: it ends on one of them, and
    // both servers say the same.
    let racers = (0..8u8).map(|i| {
        let srv = if i % 2 == 0 { &a } else { &b };
        async move { srv.push_image(REPO, "moving", 100 + i).await.digest }
    });
    let pushed = futures::future::join_all(racers).await;
    let on_a = a
        .head(&format!("/v2/{REPO}/manifests/moving"))
        .await
        .expect(200);
    let on_b = b
        .head(&format!("/v2/{REPO}/manifests/moving"))
        .await
        .expect(200);
    let tagged = on_a.must_header("docker-content-digest").to_owned();
    assert_eq!(on_b.must_header("docker-content-digest"), tagged);
    assert!(pushed.contains(&tagged));
    for srv in [&a, &b] {
        let tags = srv.get(&format!("/v2/{REPO}/tags/list")).await.expect(200);
        assert_eq!(tags.json()["tags"], serde_json::json!(["latest", "moving"]));
        for d in &pushed {
            srv.get(&format!("/v2/{REPO}/manifests/{d}"))
                .await
                .expect(200);
        }
        let cat = srv.get("/v2/_catalog").await.expect(200);
        assert_eq!(cat.json()["repositories"], serde_json::json!([REPO]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_session_moves_between_servers() {
    let a = Server::start().await;
    let b = a.start_sibling().await;
    let data = pattern(4000, 5);
    let digest = sha256(&data);

    let mut location = path_of(&a.start_upload(REPO).await);
    for (i, chunk) in data[..3000].chunks(1000).enumerate() {
        let srv = if i % 2 == 0 { &b } else { &a };
        let start = i * 1000;
        let r = srv
            .patch(&location, chunk, Some(&format!("{start}-{}", start + 999)))
            .await
            .expect(202);
        location = path_of(&r.location());
    }
    let status = b.get(&location).await.expect(204);
    assert_eq!(status.must_header("range"), "0-2999");

    // The same chunk sent to both at once: one appends it, the other is
    // told where the session now ends; the session stays whole.
    let chunk = &data[3000..3500];
    let (ra, rb) = tokio::join!(
        a.patch(&location, chunk, Some("3000-3499")),
        b.patch(&location, chunk, Some("3000-3499"))
    );
    let mut statuses = [ra.status.as_u16(), rb.status.as_u16()];
    statuses.sort();
    assert_eq!(statuses, [202, 416], "{ra} / {rb}");
    let status = a.get(&location).await.expect(204);
    assert_eq!(status.must_header("range"), "0-3499");

    // Finished on the other server than the last chunk went to.
    let r = b
        .put_bytes(
            &with_query(&location, "digest", &digest),
            data[3500..].to_vec(),
        )
        .await
        .expect(201);
    for srv in [&a, &b] {
        let got = srv.get(&path_of(&r.location())).await.expect(200);
        assert_eq!(got.body.as_ref(), data.as_slice());
    }
    // The session is gone everywhere.
    a.get(&location).await.expect(404);
    b.get(&location).await.expect(404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_blob_finished_through_both_servers_at_once() {
    let a = Server::start().await;
    let b = a.start_sibling().await;
    let data = pattern(20_000, 9);
    let digest = sha256(&data);
    let uploads = (0..6).map(|i| {
        let srv = if i % 2 == 0 { &a } else { &b };
        let data = data.clone();
        let digest = digest.clone();
        async move {
            let location = srv.start_upload(REPO).await;
            srv.send(
                srv.request(Method::PUT, &with_query(&location, "digest", &digest))
                    .header("content-type", "application/octet-stream")
                    .body(data),
            )
            .await
            .status
            .as_u16()
        }
    });
    let statuses = futures::future::join_all(uploads).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    for srv in [&a, &b] {
        let got = srv
            .get(&format!("/v2/{REPO}/blobs/{digest}"))
            .await
            .expect(200);
        assert_eq!(got.body.as_ref(), data.as_slice());
    }
}
