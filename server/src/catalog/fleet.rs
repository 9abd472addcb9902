//! The catalog's side of the fleet control plane (`crate::fleet`): join
//! tokens, nodes, deployments, replicas and deployment events. The SQL is
//! `fleet_queries.rs`, compiled for each dialect like `queries.rs`; every
//! method here dispatches to it. Rows are returned as stored (JSON columns
//! as text); the fleet service gives them meaning.

use super::{Catalog, Db, Result, impossible, postgres, sqlite};

/// Calls the function of `fleet_queries.rs` of the catalog's dialect.
macro_rules! fleet_dispatch {
    ($self:ident, $f:ident($($arg:expr),* $(,)?)) => {
        match &$self.db {
            Db::Sqlite(h) => sqlite::fleet_queries::$f(h, $($arg),*).await,
            Db::Postgres(h) => postgres::fleet_queries::$f(h, $($arg),*).await,
        }
    };
}

/// A `fleet_nodes` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeRow {
    pub name: String,
    pub secret_hash: String,
    /// fleet-proto `NodeFacts` as JSON.
    pub facts: String,
    pub registry: String,
    pub free_memory: i64,
    pub running_containers: i64,
    /// Unix ms.
    pub joined_at: i64,
    pub last_heartbeat: i64,
    /// `ready` or `down`.
    pub status: String,
}

/// A `fleet_deployments` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeploymentRow {
    pub name: String,
    /// fleet-proto `DeploymentSpec` as JSON.
    pub spec: String,
    pub created_at: i64,
}

/// A `fleet_replicas` row.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReplicaRow {
    pub id: String,
    pub deployment: String,
    pub ordinal: i64,
    pub node: Option<String>,
    pub generation: i64,
    pub state: String,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub container_id: Option<String>,
    pub updated_at: i64,
}

/// A `fleet_events` row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRow {
    pub time: i64,
    pub replica: Option<String>,
    pub node: Option<String>,
    pub message: String,
}

/// A node about to join.
#[derive(Debug)]
pub struct NewNode<'a> {
    pub name: &'a str,
    pub secret_hash: &'a str,
    pub facts: &'a str,
    pub registry: &'a str,
    /// Free memory until the first heartbeat says (the node's total).
    pub free_memory: i64,
    /// The robot user `node.NAME` and the argon2 hash of the node's secret.
    pub robot: &'a str,
    pub robot_hash: &'a str,
}

/// Outcome of [`Catalog::fleet_join`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinOutcome {
    Joined,
    /// The token is unknown, expired or used (nothing was changed).
    BadToken,
    /// A node (or a user) of that name exists (the token was not used).
    NameTaken,
}

/// What a join token's row says, for the message of a refused join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenState {
    Unknown,
    Expired,
    Used,
    Valid,
}

/// A report's change to one replica, applied only if the replica is still
/// on `node` at `generation`.
#[derive(Debug)]
pub struct ReplicaUpdate<'a> {
    pub id: &'a str,
    pub node: &'a str,
    pub generation: i64,
    pub state: &'a str,
    pub exit_code: Option<i64>,
    pub reason: Option<&'a str>,
    pub container_id: Option<&'a str>,
}

impl Catalog {
    /// Stores a join token (by its hash) valid until `expires_at` (unix ms).
    pub async fn fleet_create_token(
        &self,
        hash: &str,
        pull_json: &str,
        expires_at: i64,
    ) -> Result<()> {
        fleet_dispatch!(self, create_token(hash, pull_json, expires_at))
    }

    /// Consumes the token and creates the node and its robot user (pull
    /// grants on the token's patterns), in one transaction: the token is
    /// used only if the node is made.
    pub async fn fleet_join(&self, token_hash: &str, node: &NewNode<'_>) -> Result<JoinOutcome> {
        if impossible(node.name) || impossible(token_hash) {
            return Ok(JoinOutcome::BadToken);
        }
        fleet_dispatch!(self, join(token_hash, node))
    }

    pub async fn fleet_token_state(&self, hash: &str) -> Result<TokenState> {
        fleet_dispatch!(self, token_state(hash))
    }

    pub async fn fleet_node(&self, name: &str) -> Result<Option<NodeRow>> {
        if impossible(name) {
            return Ok(None);
        }
        fleet_dispatch!(self, node(name))
    }

    pub async fn fleet_nodes(&self) -> Result<Vec<NodeRow>> {
        fleet_dispatch!(self, nodes())
    }

    /// Records a heartbeat. None: no such node; Some(true): it was `down`
    /// and is `ready` again.
    pub async fn fleet_heartbeat(
        &self,
        name: &str,
        facts: &str,
        free_memory: i64,
        running: i64,
    ) -> Result<Option<bool>> {
        fleet_dispatch!(self, heartbeat(name, facts, free_memory, running))
    }

    /// Marks a ready node `down` if its last heartbeat is older than
    /// `cutoff` (unix ms). True when it changed.
    pub async fn fleet_mark_down(&self, name: &str, cutoff: i64) -> Result<bool> {
        fleet_dispatch!(self, mark_down(name, cutoff))
    }

    /// Deletes a node and its robot user in one transaction; false when
    /// there was no such node. Its replicas are re-placed by the scheduler.
    pub async fn fleet_remove_node(&self, name: &str, robot: &str) -> Result<bool> {
        if impossible(name) {
            return Ok(false);
        }
        fleet_dispatch!(self, remove_node(name, robot))
    }

    /// Creates a deployment and its replica rows (`pending`) with a first
    /// event, in one transaction; false when the name is taken.
    pub async fn fleet_create_deployment(
        &self,
        name: &str,
        spec: &str,
        replicas: &[(String, i64)],
        message: &str,
    ) -> Result<bool> {
        fleet_dispatch!(self, create_deployment(name, spec, replicas, message))
    }

    pub async fn fleet_deployment(&self, name: &str) -> Result<Option<DeploymentRow>> {
        if impossible(name) {
            return Ok(None);
        }
        fleet_dispatch!(self, deployment(name))
    }

    pub async fn fleet_deployments(&self) -> Result<Vec<DeploymentRow>> {
        fleet_dispatch!(self, deployments())
    }

    /// Deletes a deployment (its replicas and events go with it). Returns
    /// the nodes its replicas were on, or None when there was none.
    pub async fn fleet_delete_deployment(&self, name: &str) -> Result<Option<Vec<String>>> {
        if impossible(name) {
            return Ok(None);
        }
        fleet_dispatch!(self, delete_deployment(name))
    }

    /// Replicas, of one deployment or all, by deployment and ordinal.
    pub async fn fleet_replica(&self, id: &str) -> Result<Option<ReplicaRow>> {
        if impossible(id) {
            return Ok(None);
        }
        fleet_dispatch!(self, replica(id))
    }

    pub async fn fleet_replicas(&self, deployment: Option<&str>) -> Result<Vec<ReplicaRow>> {
        fleet_dispatch!(self, replicas(deployment))
    }

    /// A node's replicas with their deployment's spec (JSON), by id.
    pub async fn fleet_node_assignments(&self, node: &str) -> Result<Vec<(ReplicaRow, String)>> {
        fleet_dispatch!(self, node_assignments(node))
    }

    /// Places an unplaced replica on `node` (generation bumped, state
    /// `assigned`) if it is still unplaced at `generation`.
    pub async fn fleet_place(&self, id: &str, generation: i64, node: &str) -> Result<bool> {
        fleet_dispatch!(self, place(id, generation, node))
    }

    /// Takes a replica off `node` (generation bumped, state `pending`,
    /// `reason` kept) if it is still there at `generation`.
    pub async fn fleet_unplace(
        &self,
        id: &str,
        generation: i64,
        node: &str,
        reason: &str,
    ) -> Result<bool> {
        fleet_dispatch!(self, unplace(id, generation, node, reason))
    }

    /// Sets why an unplaced replica waits (only if it still waits at
    /// `generation`).
    pub async fn fleet_set_pending_reason(
        &self,
        id: &str,
        generation: i64,
        reason: &str,
    ) -> Result<bool> {
        fleet_dispatch!(self, set_pending_reason(id, generation, reason))
    }

    /// Applies a node's report of one replica; false when the replica is no
    /// longer on that node at that generation.
    pub async fn fleet_update_replica(&self, update: &ReplicaUpdate<'_>) -> Result<bool> {
        fleet_dispatch!(self, update_replica(update))
    }

    /// Appends to a deployment's history (the oldest beyond the last 1,000
    /// are dropped).
    pub async fn fleet_event(
        &self,
        deployment: &str,
        replica: Option<&str>,
        node: Option<&str>,
        message: &str,
    ) -> Result<()> {
        fleet_dispatch!(self, add_event(deployment, replica, node, message))
    }

    /// The last `limit` events of a deployment, oldest first.
    pub async fn fleet_events(&self, deployment: &str, limit: i64) -> Result<Vec<EventRow>> {
        fleet_dispatch!(self, events(deployment, limit))
    }
}
