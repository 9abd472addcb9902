//! The daemon's HTTP handlers: the routes of the table in `api`, each a
//! thin translation between the wire and `images`/`containers`.
//!
//! Calls `images`, `containers`; called by `daemon::run`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Serialize;
use tokio::sync::mpsc;

use super::attach;
use super::containers::Containers;
use super::error::{Error, Result};
use super::images::Images;
use super::volumes::Volumes;
use crate::api::{
    CreateRequest, LoginRequest, LoginResponse, PullEvent, PullRequest, VolumeCreateRequest,
};

#[derive(Clone)]
pub struct AppState {
    pub images: Arc<Images>,
    pub containers: Arc<Containers>,
    pub execs: Arc<super::exec::Execs>,
    pub volumes: Arc<Volumes>,
}

type Q = Query<HashMap<String, String>>;

/// docker's boolean query values: `1`/`true`/`True`.
fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key)
        .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "True" | "TRUE" | "yes"))
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (status, [(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => Error::internal(e).into_response(),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("bad request body: {e}")))
}

/// A body made from a channel of chunks.
fn streamed(rx: mpsc::Receiver<Bytes>, content_type: &'static str) -> Response {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, content_type)],
        Body::from_stream(stream),
    )
        .into_response()
}

/// `?t=` of stop and restart: seconds before SIGKILL.
fn timeout(q: &HashMap<String, String>) -> Result<Option<u64>> {
    q.get("t")
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| Error::BadRequest(format!("invalid timeout {t:?}")))
        })
        .transpose()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/_ping", get(|| async { "OK" }))
        .route("/images/pull", post(pull))
        .route("/images/json", get(images_list))
        .route("/images/inspect", get(image_inspect))
        .route("/images", delete(image_remove))
        .route("/images/prune", post(image_prune))
        .route("/commit", post(commit))
        .route("/images/tag", post(image_tag))
        .route("/images/push", post(push))
        .route("/auth", post(login).delete(logout))
        .route("/containers/create", post(create))
        .route("/containers/json", get(containers_list))
        .route("/containers/{id}/start", post(start))
        .route("/containers/{id}/stop", post(stop))
        .route("/containers/{id}/restart", post(restart))
        .route("/containers/{id}/kill", post(kill))
        .route("/containers/{id}/wait", post(wait))
        .route("/containers/{id}/json", get(container_inspect))
        .route("/containers/{id}/logs", get(logs))
        .route("/containers/{id}", delete(container_remove))
        .route("/containers/{id}/exec", post(exec_create))
        .route("/exec/{id}/start", post(exec_start))
        .route("/exec/{id}/json", get(exec_inspect))
        .route("/exec/{id}/resize", post(exec_resize))
        .route("/volumes/create", post(volume_create))
        .route("/volumes", get(volumes_list))
        .route("/volumes/prune", post(volume_prune))
        .route("/volumes/{name}", get(volume_inspect).delete(volume_remove))
        .route("/containers/{id}/attach", post(attach))
        .route("/containers/{id}/resize", post(resize))
        .route("/containers/{id}/stats", get(stats))
        .fallback(|| async { Error::NotFound("page not found".into()) })
        .with_state(state)
}

async fn pull(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let req: PullRequest = parse(&body)?;
    if req.reference.is_empty() || req.reference.len() > 1024 {
        return Err(Error::BadRequest("invalid reference format".into()));
    }
    let (events_tx, mut events_rx) = mpsc::channel::<PullEvent>(256);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let images = s.images.clone();
    tokio::spawn(async move {
        let forward = {
            let tx = tx.clone();
            async move {
                while let Some(ev) = events_rx.recv().await {
                    let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                    line.push(b'\n');
                    if tx.send(Bytes::from(line)).await.is_err() {
                        break;
                    }
                }
            }
        };
        let pulling = async move { images.pull(&req.reference, events_tx).await };
        let (result, ()) = tokio::join!(pulling, forward);
        if let Err(e) = result {
            let ev = PullEvent {
                error: Some(e.to_string()),
                ..PullEvent::default()
            };
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            let _ = tx.send(Bytes::from(line)).await;
        }
    });
    Ok(streamed(rx, "application/x-ndjson"))
}

async fn commit(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let req: crate::api::CommitRequest = parse(&body)?;
    let src = s.containers.commit_source(&req.container).await?;
    let id = s.images.commit(src, &req).await?;
    Ok(json(
        StatusCode::CREATED,
        &crate::api::CommitResponse { id },
    ))
}

async fn image_tag(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let req: crate::api::TagRequest = parse(&body)?;
    s.images.tag(&req.source, &req.target).await?;
    Ok(StatusCode::CREATED.into_response())
}

/// Like `pull`: NDJSON events, a failure after the 200 as a last event.
async fn push(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let req: crate::api::PushRequest = parse(&body)?;
    if req.reference.is_empty() || req.reference.len() > 1024 {
        return Err(Error::BadRequest("invalid reference format".into()));
    }
    let (target, manifest) = s.images.push_target(&req.reference).await?;
    let (events_tx, mut events_rx) = mpsc::channel::<PullEvent>(256);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    let images = s.images.clone();
    tokio::spawn(async move {
        let forward = {
            let tx = tx.clone();
            async move {
                while let Some(ev) = events_rx.recv().await {
                    let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                    line.push(b'\n');
                    if tx.send(Bytes::from(line)).await.is_err() {
                        break;
                    }
                }
            }
        };
        let pushing = async move { images.push(&target, &manifest, events_tx).await };
        let (result, ()) = tokio::join!(pushing, forward);
        if let Err(e) = result {
            let ev = PullEvent {
                error: Some(e.to_string()),
                ..PullEvent::default()
            };
            let mut line = serde_json::to_vec(&ev).unwrap_or_default();
            line.push(b'\n');
            let _ = tx.send(Bytes::from(line)).await;
        }
    });
    Ok(streamed(rx, "application/x-ndjson"))
}

async fn images_list(State(s): State<AppState>) -> Result<Response> {
    let in_use = s.containers.images_in_use().await?;
    Ok(json(StatusCode::OK, &s.images.list(&in_use).await?))
}

async fn image_inspect(State(s): State<AppState>, Query(q): Q) -> Result<Response> {
    let name = q.get("name").map(String::as_str).unwrap_or_default();
    Ok(json(StatusCode::OK, &s.images.inspect(name).await?))
}

async fn image_remove(State(s): State<AppState>, Query(q): Q) -> Result<Response> {
    let name = q.get("name").map(String::as_str).unwrap_or_default();
    let in_use = s.containers.images_in_use().await?;
    let removed = s.images.remove(name, flag(&q, "force"), &in_use).await?;
    Ok(json(StatusCode::OK, &removed))
}

async fn image_prune(State(s): State<AppState>, Query(q): Q) -> Result<Response> {
    let in_use = s.containers.images_in_use().await?;
    Ok(json(
        StatusCode::OK,
        &s.images.prune(flag(&q, "all"), &in_use).await?,
    ))
}

async fn login(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let req: LoginRequest = parse(&body)?;
    s.images.login(req).await?;
    Ok(json(
        StatusCode::OK,
        &LoginResponse {
            status: "Login Succeeded".into(),
        },
    ))
}

async fn logout(State(s): State<AppState>, Query(q): Q) -> Result<Response> {
    let registry = q.get("registry").map(String::as_str).unwrap_or_default();
    s.images.logout(registry).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn create(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let req: CreateRequest = parse(&body)?;
    Ok(json(StatusCode::CREATED, &s.containers.create(req).await?))
}

async fn containers_list(State(s): State<AppState>, Query(q): Q) -> Result<Response> {
    Ok(json(
        StatusCode::OK,
        &s.containers.list(flag(&q, "all")).await?,
    ))
}

async fn start(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Q,
    req: axum::extract::Request,
) -> Result<Response> {
    if flag(&q, "attach") && attach::wants_upgrade(req.headers()) {
        let opts = attach::AttachOptions::from_query(&q)?;
        attach::start_attached(&s.containers, &id, opts, req).await
    } else if flag(&q, "attach") {
        let rx = s.containers.start_attached(&id).await?;
        Ok(streamed(rx, "application/vnd.docker.multiplexed-stream"))
    } else {
        s.containers.start(&id).await?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

async fn attach(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Q,
    req: axum::extract::Request,
) -> Result<Response> {
    let opts = attach::AttachOptions::from_query(&q)?;
    attach::attach(&s.containers, &id, opts, req).await
}

async fn resize(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Q,
) -> Result<Response> {
    let dim = |k: &str| -> Result<u16> {
        let v = q.get(k).map(String::as_str).unwrap_or("0");
        v.parse::<u16>()
            .map_err(|_| Error::BadRequest(format!("invalid {k} {v:?}")))
    };
    attach::resize(&s.containers, &id, dim("h")?, dim("w")?).await?;
    Ok(StatusCode::OK.into_response())
}

/// `stream` defaults to true, as docker's does.
async fn stats(State(s): State<AppState>, Path(id): Path<String>, Query(q): Q) -> Result<Response> {
    if !q.contains_key("stream") || flag(&q, "stream") {
        let rx = super::stats::stream(s.containers.clone(), &id).await?;
        Ok(streamed(rx, "application/json"))
    } else {
        let one_shot = flag(&q, "one-shot");
        Ok(json(
            StatusCode::OK,
            &super::stats::once(&s.containers, &id, one_shot).await?,
        ))
    }
}

async fn stop(State(s): State<AppState>, Path(id): Path<String>, Query(q): Q) -> Result<Response> {
    s.containers.stop(&id, timeout(&q)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn restart(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Q,
) -> Result<Response> {
    s.containers.restart(&id, timeout(&q)?).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn kill(State(s): State<AppState>, Path(id): Path<String>, Query(q): Q) -> Result<Response> {
    let signal = q.get("signal").map(String::as_str).unwrap_or("KILL");
    s.containers.kill(&id, signal).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn wait(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(json(StatusCode::OK, &s.containers.wait(&id).await?))
}

async fn container_inspect(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let mut value = s.containers.inspect(&id).await?;
    // docker's ExecIDs: the container's exec instances still running (null
    // when none).
    let cid = value["Id"].as_str().unwrap_or_default().to_string();
    let execs = s.execs.ids_of(&cid);
    if let Some(obj) = value.as_object_mut() {
        obj.insert(
            "ExecIDs".into(),
            if execs.is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::json!(execs)
            },
        );
    }
    Ok(json(StatusCode::OK, &value))
}

async fn exec_create(
    State(s): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let req: crate::api::ExecCreateRequest = parse(&body)?;
    Ok(json(StatusCode::CREATED, &s.execs.create(&id, req).await?))
}

async fn exec_start(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Q,
    request: axum::extract::Request,
) -> Result<Response> {
    if flag(&q, "stdin") || attach::wants_upgrade(request.headers()) {
        // `exec -i`, `exec -t`: a hijacked stream, as attach's.
        let stream = s.execs.start_attached(&id).await?;
        let opts = attach::AttachOptions {
            stdin: stream.input.is_some(),
            detach_keys: stream.detach_keys,
        };
        let source = attach::Source::Exec {
            output: stream.output,
            input: stream.input,
        };
        let close_stdin = stream.close_stdin;
        return Ok(attach::switch(request, move |io| async move {
            attach::proxy(io, source, &opts, close_stdin, async { 0 }).await;
        }));
    }
    match s.execs.start(&id, flag(&q, "detach")).await? {
        Some(rx) => Ok(streamed(rx, "application/vnd.docker.multiplexed-stream")),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

async fn exec_resize(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Q,
) -> Result<Response> {
    let dim = |k: &str| -> Result<u16> {
        let v = q.get(k).map(String::as_str).unwrap_or("0");
        v.parse::<u16>()
            .map_err(|_| Error::BadRequest(format!("invalid {k} {v:?}")))
    };
    s.execs.resize(&id, dim("h")?, dim("w")?)?;
    Ok(StatusCode::OK.into_response())
}

async fn exec_inspect(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(json(StatusCode::OK, &s.execs.inspect(&id)?))
}

async fn logs(State(s): State<AppState>, Path(id): Path<String>, Query(q): Q) -> Result<Response> {
    let tail = match q.get("tail").map(String::as_str) {
        None | Some("all") | Some("") => None,
        Some(n) => Some(
            n.parse::<usize>()
                .map_err(|_| Error::BadRequest(format!("invalid tail {n:?}")))?,
        ),
    };
    let rx = s
        .containers
        .logs(&id, flag(&q, "follow"), tail, flag(&q, "timestamps"))
        .await?;
    Ok(streamed(rx, "application/vnd.docker.multiplexed-stream"))
}

async fn container_remove(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Q,
) -> Result<Response> {
    s.containers
        .remove(&id, flag(&q, "force"), flag(&q, "v"))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn volume_create(State(s): State<AppState>, body: Bytes) -> Result<Response> {
    let req: VolumeCreateRequest = parse(&body)?;
    Ok(json(StatusCode::CREATED, &s.volumes.create(req).await?))
}

async fn volumes_list(State(s): State<AppState>, Query(q): Q) -> Result<Response> {
    let dangling = q.get("dangling").map(|_| flag(&q, "dangling"));
    Ok(json(StatusCode::OK, &s.volumes.list(dangling).await?))
}

async fn volume_inspect(State(s): State<AppState>, Path(name): Path<String>) -> Result<Response> {
    Ok(json(StatusCode::OK, &s.volumes.inspect(&name).await?))
}

async fn volume_remove(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Query(q): Q,
) -> Result<Response> {
    s.volumes.remove(&name, flag(&q, "force")).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn volume_prune(State(s): State<AppState>, Query(q): Q) -> Result<Response> {
    Ok(json(
        StatusCode::OK,
        &s.volumes.prune(flag(&q, "all")).await?,
    ))
}
