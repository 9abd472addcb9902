//! The fleet's HTTP side (issue #7): the node endpoints and the admin API
//! of `wharf_fleet_proto` (its `//!` doc has the table). Calls the fleet
//! service (`crate::fleet`) and, for who is asking, the node credential
//! check there or the same admin check as `/api/v1` browse (`Bearer` token
//! or `Basic` credentials of an admin; auth off: open).
//!
//! Bodies are bounded (JSON: 256 KiB; a log line a node posts: 64 KiB);
//! errors are the `/v2/` JSON error body with a message meant for people
//! (the CLI prints it as its one line).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use futures::StreamExt;
use serde::de::DeserializeOwned;
use wharf_fleet_proto::{
    DeploymentEvent, DeploymentInfo, DeploymentSpec, Heartbeat, JoinRequest, JoinResponse, LogLine,
    NodeFacts, NodeInfo, NodeStatus, ReplicaInfo, ReplicaSpec, ReplicaState, ReplicaStatus, Report,
    ServerMessage, TokenRequest, TokenResponse,
};

use super::{ApiError, AppState};
use crate::fleet::{Fleet, FleetError, MAX_LOG_LINE};

/// Largest JSON body read.
const MAX_JSON: usize = 256 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/nodes/join", post(join))
        .route("/api/v1/nodes/tokens", post(create_token))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{name}", get(get_node).delete(remove_node))
        .route("/api/v1/node/channel", get(channel))
        .route("/api/v1/node/heartbeat", post(heartbeat))
        .route("/api/v1/node/report", post(report))
        .route("/api/v1/node/logs/{request}", post(node_logs))
        .route(
            "/api/v1/deployments",
            get(list_deployments).post(create_deployment),
        )
        .route(
            "/api/v1/deployments/{name}",
            get(get_deployment).delete(remove_deployment),
        )
        .route("/api/v1/deployments/{name}/logs", get(deployment_logs))
}

impl From<FleetError> for ApiError {
    fn from(e: FleetError) -> Self {
        let msg = e.to_string();
        match e {
            FleetError::Invalid(_) => ApiError::bad_request("INVALID", msg),
            FleetError::Unauthorized(_) => {
                ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", msg)
                    .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"wharf-fleet\"")
            }
            FleetError::Forbidden(_) => ApiError::new(StatusCode::FORBIDDEN, "DENIED", msg),
            FleetError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", msg),
            FleetError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "CONFLICT", msg),
            FleetError::Catalog(_) | FleetError::Internal(_) => {
                tracing::error!(error = %msg, "fleet internal error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "internal server error",
                )
            }
        }
    }
}

type Answer = Result<Response, ApiError>;

async fn read_json<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_JSON).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "INVALID",
            format!("request body larger than {MAX_JSON} bytes"),
        )
    })?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("INVALID", format!("invalid JSON body: {e}")))
}

fn json<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

fn ndjson(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// An admin, or anyone when auth is off.
async fn admin(
    state: &AppState,
    req_headers: &HeaderMap,
    ext: &axum::http::Extensions,
) -> Result<(), ApiError> {
    if state.auth.is_none() {
        return Ok(());
    }
    let viewer = super::browse::viewer(state, req_headers, super::browse::client(ext)).await?;
    if viewer.is_admin() {
        Ok(())
    } else if viewer.is_anonymous() {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the fleet API needs an admin's credentials",
        )
        .with_header(header::WWW_AUTHENTICATE, "Basic realm=\"wharf\""))
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            "the fleet API is for admins only",
        ))
    }
}

/// The node a request comes from (`Basic NAME:SECRET`).
async fn node(fleet: &Fleet, headers: &HeaderMap) -> Result<String, ApiError> {
    let refused =
        || FleetError::Unauthorized("node credentials required (Basic NAME:SECRET)".into());
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(refused)?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(refused)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(refused().into());
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(refused)?;
    let (name, secret) = decoded.split_once(':').ok_or_else(refused)?;
    fleet.authenticate(name, secret).await?;
    Ok(name.to_owned())
}

// ---- node side -------------------------------------------------------------------

#[utoipa::path(post, path = "/api/v1/nodes/join", tag = "fleet: nodes",
    request_body = JoinRequest,
    responses((status = 200, description = "Joined: the node credential, shown once", body = JoinResponse),
        (status = 401, description = "Token expired, used or unknown"), (status = 409, description = "Name taken")))]
async fn join(State(state): State<AppState>, req: Request) -> Answer {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".:-[]".contains(c))
        })
        .map(str::to_owned)
        .ok_or_else(|| ApiError::bad_request("INVALID", "missing or invalid Host header"))?;
    let body: JoinRequest = read_json(req.into_body()).await?;
    let resp = state.fleet.join(&body, &host).await?;
    Ok(json(StatusCode::OK, &resp))
}

#[utoipa::path(get, path = "/api/v1/node/channel", tag = "fleet: nodes",
    responses((status = 200, description = "NDJSON stream of ServerMessage (Basic NAME:SECRET)", body = ServerMessage,
        content_type = "application/x-ndjson")))]
async fn channel(State(state): State<AppState>, headers: HeaderMap) -> Answer {
    let name = node(&state.fleet, &headers).await?;
    Ok(ndjson(Body::from_stream(state.fleet.connect(&name))))
}

#[utoipa::path(post, path = "/api/v1/node/heartbeat", tag = "fleet: nodes", request_body = Heartbeat,
    responses((status = 204, description = "Recorded (Basic NAME:SECRET)")))]
async fn heartbeat(State(state): State<AppState>, req: Request) -> Answer {
    let name = node(&state.fleet, req.headers()).await?;
    let hb: Heartbeat = read_json(req.into_body()).await?;
    state.fleet.heartbeat(&name, &hb).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/api/v1/node/report", tag = "fleet: nodes", request_body = Report,
    responses((status = 204, description = "Recorded"), (status = 403, description = "A replica that is not this node's")))]
async fn report(State(state): State<AppState>, req: Request) -> Answer {
    let name = node(&state.fleet, req.headers()).await?;
    let report: Report = read_json(req.into_body()).await?;
    state.fleet.report(&name, &report).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A node's answer to a log request: NDJSON `LogLine`s relayed to the
/// client that asked, until the body ends or the client leaves.
#[utoipa::path(post, path = "/api/v1/node/logs/{request}", tag = "fleet: nodes",
    params(("request" = String, Path, description = "The id of a Logs message")),
    request_body(content = LogLine, content_type = "application/x-ndjson"),
    responses((status = 204, description = "Relayed")))]
async fn node_logs(
    State(state): State<AppState>,
    Path(request): Path<String>,
    req: Request,
) -> Answer {
    let name = node(&state.fleet, req.headers()).await?;
    let (replica, tx) = state.fleet.take_log_request(&name, &request)?;
    let mut body = req.into_body().into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    let closed = state.fleet.closed();
    tokio::pin!(closed);
    loop {
        let chunk = tokio::select! {
            c = body.next() => c,
            _ = tx.closed() => return Ok(StatusCode::NO_CONTENT.into_response()),
            _ = &mut closed => return Ok(StatusCode::NO_CONTENT.into_response()),
        };
        let Some(chunk) = chunk else { break };
        let Ok(chunk) = chunk else { break };
        buf.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + pos];
            start += pos + 1;
            if let Some(out) = Fleet::relay_line(&replica, line)
                && tx.send(out).await.is_err()
            {
                return Ok(StatusCode::NO_CONTENT.into_response());
            }
        }
        buf.drain(..start);
        if buf.len() > MAX_LOG_LINE {
            return Err(ApiError::bad_request(
                "INVALID",
                format!("log line longer than {MAX_LOG_LINE} bytes"),
            ));
        }
    }
    if let Some(out) = Fleet::relay_line(&replica, &buf) {
        let _ = tx.send(out).await;
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- admin side -------------------------------------------------------------------

#[utoipa::path(post, path = "/api/v1/nodes/tokens", tag = "fleet: admin", request_body = TokenRequest,
    responses((status = 201, description = "A one-time join token", body = TokenResponse)))]
async fn create_token(State(state): State<AppState>, req: Request) -> Answer {
    admin(&state, req.headers(), req.extensions()).await?;
    let body: TokenRequest = read_json(req.into_body()).await?;
    Ok(json(
        StatusCode::CREATED,
        &state.fleet.create_token(&body).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/nodes", tag = "fleet: admin",
    responses((status = 200, description = "Every node", body = Vec<NodeInfo>)))]
async fn list_nodes(State(state): State<AppState>, req: Request) -> Answer {
    admin(&state, req.headers(), req.extensions()).await?;
    Ok(json(StatusCode::OK, &state.fleet.nodes().await?))
}

#[utoipa::path(get, path = "/api/v1/nodes/{name}", tag = "fleet: admin", params(("name" = String, Path)),
    responses((status = 200, description = "One node", body = NodeInfo), (status = 404, description = "No such node")))]
async fn get_node(State(state): State<AppState>, Path(name): Path<String>, req: Request) -> Answer {
    admin(&state, req.headers(), req.extensions()).await?;
    Ok(json(StatusCode::OK, &state.fleet.node(&name).await?))
}

#[utoipa::path(delete, path = "/api/v1/nodes/{name}", tag = "fleet: admin", params(("name" = String, Path)),
    responses((status = 204, description = "Removed: its credential and robot user are gone, its replicas move")))]
async fn remove_node(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Answer {
    admin(&state, req.headers(), req.extensions()).await?;
    state.fleet.remove_node(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(post, path = "/api/v1/deployments", tag = "fleet: admin", request_body = DeploymentSpec,
    responses((status = 201, description = "Stored and placed", body = DeploymentInfo),
        (status = 400, description = "Bad spec"), (status = 409, description = "Name taken")))]
async fn create_deployment(State(state): State<AppState>, req: Request) -> Answer {
    admin(&state, req.headers(), req.extensions()).await?;
    let spec: DeploymentSpec = read_json(req.into_body()).await?;
    Ok(json(
        StatusCode::CREATED,
        &state.fleet.create_deployment(spec).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/deployments", tag = "fleet: admin",
    responses((status = 200, description = "Every deployment", body = Vec<DeploymentInfo>)))]
async fn list_deployments(State(state): State<AppState>, req: Request) -> Answer {
    admin(&state, req.headers(), req.extensions()).await?;
    Ok(json(StatusCode::OK, &state.fleet.deployments().await?))
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}", tag = "fleet: admin", params(("name" = String, Path)),
    responses((status = 200, description = "Spec, replicas and history", body = DeploymentInfo),
        (status = 404, description = "No such deployment")))]
async fn get_deployment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Answer {
    admin(&state, req.headers(), req.extensions()).await?;
    Ok(json(
        StatusCode::OK,
        &state.fleet.deployment(&name, true).await?,
    ))
}

#[utoipa::path(delete, path = "/api/v1/deployments/{name}", tag = "fleet: admin", params(("name" = String, Path)),
    responses((status = 204, description = "Removed; the nodes remove its containers")))]
async fn remove_deployment(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: Request,
) -> Answer {
    admin(&state, req.headers(), req.extensions()).await?;
    state.fleet.delete_deployment(&name).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(serde::Deserialize)]
struct LogsQuery {
    follow: Option<String>,
    tail: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/deployments/{name}/logs", tag = "fleet: admin",
    params(("name" = String, Path), ("follow" = Option<String>, Query, description = "1: keep streaming"),
        ("tail" = Option<u64>, Query, description = "Lines from the end of each replica's log")),
    responses((status = 200, description = "NDJSON of LogLine from every replica", body = LogLine,
        content_type = "application/x-ndjson")))]
async fn deployment_logs(
    State(state): State<AppState>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    req: Request,
) -> Answer {
    admin(&state, req.headers(), req.extensions()).await?;
    let query = query.unwrap_or_default();
    if query.len() > 1024 {
        return Err(ApiError::bad_request("INVALID", "query string too long"));
    }
    let q: LogsQuery = serde_urlencoded::from_str(&query)
        .map_err(|e| ApiError::bad_request("INVALID", format!("invalid query: {e}")))?;
    let follow = match q.follow.as_deref() {
        None | Some("0" | "false" | "") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "INVALID",
                format!("follow must be 1 or 0, not {other:?}"),
            ));
        }
    };
    let stream = state.fleet.logs(&name, follow, q.tail).await?;
    Ok(ndjson(Body::from_stream(stream)))
}

/// The fleet's part of the `/api/v1` OpenAPI document (merged into
/// `browse::ApiDoc` when served).
#[derive(utoipa::OpenApi)]
#[openapi(
    paths(
        join,
        channel,
        heartbeat,
        report,
        node_logs,
        create_token,
        list_nodes,
        get_node,
        remove_node,
        create_deployment,
        list_deployments,
        get_deployment,
        remove_deployment,
        deployment_logs
    ),
    components(schemas(
        JoinRequest,
        JoinResponse,
        NodeFacts,
        Heartbeat,
        ServerMessage,
        ReplicaSpec,
        Report,
        ReplicaStatus,
        ReplicaState,
        LogLine,
        TokenRequest,
        TokenResponse,
        NodeInfo,
        NodeStatus,
        DeploymentSpec,
        DeploymentInfo,
        ReplicaInfo,
        DeploymentEvent
    ))
)]
pub struct FleetDoc;
