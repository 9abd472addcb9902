//! The fleet wire contract (issue #7): what wharf-server and wharf-runner
//! nodes say to each other, and what the admin API and CLI exchange about
//! nodes and deployments. Serde types only: no I/O, no dependencies on
//! either side, so the two binaries cannot drift apart.
//!
//! Transport (all JSON over HTTP(S) to the server's one listener; the node
//! always connects out, so nodes behind NAT work):
//!
//! Node side, authenticated with `Authorization: Basic base64(NAME:SECRET)`
//! (the node credential from [`JoinResponse`]) except the join itself:
//! - `POST /api/v1/nodes/join` [`JoinRequest`] -> [`JoinResponse`];
//!   401 bad/expired/used token, 409 name taken, 400 bad facts.
//! - `GET /api/v1/node/channel` -> a long-lived NDJSON stream of
//!   [`ServerMessage`], one JSON object per line. The server sends the full
//!   [`ServerMessage::Assign`] set on connect and whenever it changes, and a
//!   [`ServerMessage::Ping`] every `heartbeat_secs`. The node reconnects
//!   with back-off when it ends.
//! - `POST /api/v1/node/heartbeat` [`Heartbeat`] -> 204, every
//!   `heartbeat_secs`; a node without one for the server's TTL is `down`.
//! - `POST /api/v1/node/report` [`Report`] -> 204, whenever a replica's
//!   state changes (and the full set after reconnecting). A node may only
//!   report replicas assigned to it (others: 403).
//! - `POST /api/v1/node/logs/{request}` with a streamed body of
//!   [`LogLine`] NDJSON answers a [`ServerMessage::Logs`] request; the
//!   server relays it to the client that asked.
//!
//! Admin side (an admin's Bearer token or Basic credentials, as `/v2/`):
//! - `POST /api/v1/nodes/tokens` [`TokenRequest`] -> [`TokenResponse`]
//! - `GET /api/v1/nodes` -> `[NodeInfo]`; `GET|DELETE /api/v1/nodes/{name}`
//! - `POST /api/v1/deployments` [`DeploymentSpec`] -> [`DeploymentInfo`]
//!   (201; 409 name taken; 400 bad spec)
//! - `GET /api/v1/deployments` -> `[DeploymentInfo]`;
//!   `GET|DELETE /api/v1/deployments/{name}`
//! - `GET /api/v1/deployments/{name}/logs?follow=1&tail=N` -> NDJSON of
//!   [`LogLine`] from every replica, relayed from the nodes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The label the runner puts on a container it runs for a deployment; its
/// value is the [`ReplicaSpec::id`].
pub const REPLICA_LABEL: &str = "io.wharf.fleet.replica";
/// The label holding the deployment's name.
pub const DEPLOYMENT_LABEL: &str = "io.wharf.fleet.deployment";
/// Default seconds without a heartbeat before a node is `down`.
pub const DEFAULT_NODE_TTL_SECS: u64 = 15;

/// What a node says about itself when it joins (and again in heartbeats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeFacts {
    /// Addresses of the node's interfaces (not loopback).
    pub addresses: Vec<String>,
    /// `linux`
    pub os: String,
    /// OCI architecture: `amd64`, `arm64`, ...
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    /// Free bytes on the filesystem of the runner's state dir.
    pub disk_bytes: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// wharf-runner's version.
    pub version: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinRequest {
    pub token: String,
    pub name: String,
    pub facts: NodeFacts,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinResponse {
    pub name: String,
    /// The node credential, shown once; the server keeps only a hash.
    pub secret: String,
    /// How often the node sends [`Heartbeat`].
    pub heartbeat_secs: u64,
    /// The registry the node pulls from (`host:port` of this server) with
    /// the node credential as Basic credentials for the token endpoint.
    pub registry: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    pub facts: NodeFacts,
    /// Memory not used by anything, as the node sees it now.
    pub free_memory_bytes: u64,
    /// Containers running on the node (all of them, fleet or not).
    pub running_containers: u32,
}

/// One replica the server wants on a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaSpec {
    /// Unique, stable id: `<deployment>.<ordinal>` (also the container's
    /// name on the node).
    pub id: String,
    pub deployment: String,
    /// Bumped whenever the server re-places this replica; a report for an
    /// older generation is ignored.
    pub generation: u64,
    /// A full reference on the server's registry: `host:port/repo:tag` or
    /// `...@sha256:...`.
    pub image: String,
    #[serde(flatten)]
    pub container: ContainerSpec,
}

/// How each replica's container runs: the same fields in a deployment's
/// spec and in every replica sent to a node (flattened into both on the
/// wire).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerSpec {
    #[serde(default)]
    pub env: Vec<String>,
    /// docker `-p` strings.
    #[serde(default)]
    pub ports: Vec<String>,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    /// docker `--restart` string (`no`, `always`, `on-failure[:N]`,
    /// `unless-stopped`).
    pub restart: Option<String>,
    /// Command overriding the image's (empty: the image's).
    #[serde(default)]
    pub cmd: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The complete set of replicas this node must run; anything labelled
    /// with [`REPLICA_LABEL`] and not in it is stopped and removed.
    Assign {
        replicas: Vec<ReplicaSpec>,
    },
    /// Stream a replica's logs to `POST /api/v1/node/logs/{request}`.
    Logs {
        request: String,
        replica: String,
        follow: bool,
        tail: Option<u64>,
    },
    Ping,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Not yet placed on a node (the server's own state).
    Pending,
    /// Sent to a node, not yet acknowledged.
    Assigned,
    Pulling,
    Running,
    Exited,
    Failed,
}

impl ReplicaState {
    /// The word on the wire, in tables and in the catalog.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Pending => "pending",
            ReplicaState::Assigned => "assigned",
            ReplicaState::Pulling => "pulling",
            ReplicaState::Running => "running",
            ReplicaState::Exited => "exited",
            ReplicaState::Failed => "failed",
        }
    }

    /// The state a word names; an unknown word is `Pending`.
    pub fn from_word(word: &str) -> ReplicaState {
        match word {
            "assigned" => ReplicaState::Assigned,
            "pulling" => ReplicaState::Pulling,
            "running" => ReplicaState::Running,
            "exited" => ReplicaState::Exited,
            "failed" => ReplicaState::Failed,
            _ => ReplicaState::Pending,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaStatus {
    pub id: String,
    pub generation: u64,
    pub state: ReplicaState,
    pub exit_code: Option<i64>,
    /// Why it failed (pull denied, image not found, ...), one line.
    pub reason: Option<String>,
    /// The container's id on the node.
    pub container_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    pub replica: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// RFC 3339.
    pub time: String,
    /// The line without its newline.
    pub line: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenRequest {
    /// Default 3600.
    pub ttl_secs: Option<u64>,
    /// Repository patterns nodes joining with this token may pull.
    #[serde(default)]
    pub pull: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenResponse {
    pub token: String,
    /// Unix seconds.
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeStatus {
    Ready,
    Down,
}

impl NodeStatus {
    /// The word on the wire and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Ready => "ready",
            NodeStatus::Down => "down",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    pub name: String,
    pub status: NodeStatus,
    pub facts: NodeFacts,
    pub free_memory_bytes: u64,
    pub running_containers: u32,
    /// Unix seconds.
    pub joined_at: i64,
    pub last_heartbeat: i64,
    /// Replica ids placed here.
    pub replicas: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentSpec {
    /// Default: derived from the image's repository name.
    pub name: Option<String>,
    pub image: String,
    /// Only this node.
    pub node: Option<String>,
    /// Only nodes with all these labels.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Default 1.
    pub replicas: Option<u32>,
    #[serde(flatten)]
    pub container: ContainerSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaInfo {
    pub id: String,
    pub node: Option<String>,
    pub generation: u64,
    pub state: ReplicaState,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub container_id: Option<String>,
    /// Unix seconds of the last change.
    pub updated_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentEvent {
    /// Unix seconds.
    pub time: i64,
    pub replica: Option<String>,
    pub node: Option<String>,
    /// One line: "placed on n1", "running", "exited (0)", "failed: ...",
    /// "node n1 down: moving", "no ready node matches selector zone=b".
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentInfo {
    pub name: String,
    pub spec: DeploymentSpec,
    /// Unix seconds.
    pub created_at: i64,
    /// One word for `deployments ls`: `pending`, `deploying`, `running`,
    /// `degraded`, `failed`.
    pub status: String,
    pub replicas: Vec<ReplicaInfo>,
    /// Newest last; `deployments inspect` shows them, `ls` does not.
    #[serde(default)]
    pub events: Vec<DeploymentEvent>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_tagged_snake_case() {
        let ping = serde_json::to_string(&ServerMessage::Ping).unwrap();
        assert_eq!(ping, r#"{"type":"ping"}"#);
        let m: ServerMessage = serde_json::from_str(r#"{"type":"assign","replicas":[]}"#).unwrap();
        assert!(matches!(m, ServerMessage::Assign { replicas } if replicas.is_empty()));
        for s in [
            ReplicaState::Pending,
            ReplicaState::Assigned,
            ReplicaState::Pulling,
            ReplicaState::Running,
            ReplicaState::Exited,
            ReplicaState::Failed,
        ] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
            assert_eq!(ReplicaState::from_word(s.as_str()), s);
        }
        for s in [NodeStatus::Ready, NodeStatus::Down] {
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
    }
}
