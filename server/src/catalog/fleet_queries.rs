//! The fleet control plane's SQL (see `catalog/fleet.rs` for what each
//! query means), written once and compiled per dialect like `queries.rs`:
//! both `sqlite.rs` and `postgres.rs` declare this file as their
//! `fleet_queries` module, so `super::` is the dialect.
//!
//! Changes of a replica are conditional updates on (id, node, generation):
//! a report, a placement or a move that lost a race changes nothing, and
//! the caller is told. The join consumes its token with a conditional
//! update in the transaction that inserts the node, so a token is used at
//! most once, and only by a join that succeeded.
//!
//! Called by `catalog/fleet.rs` only.

use super::{Handle, retry};
use crate::catalog::fleet::{
    DeploymentRow, EventRow, JoinOutcome, NewNode, NodeRow, ReplicaRow, ReplicaUpdate, TokenState,
};
use crate::catalog::{CatalogError, Result, now_ms};

/// Events kept per deployment.
const MAX_EVENTS: i64 = 1000;

pub async fn create_token(db: &Handle, hash: &str, pull: &str, expires_at: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO fleet_join_tokens (hash, pull, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash)
    .bind(pull)
    .bind(now_ms())
    .bind(expires_at)
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn join(db: &Handle, token_hash: &str, node: &NewNode<'_>) -> Result<JoinOutcome> {
    retry(|| async move {
        let now = now_ms();
        let mut tx = db.write_tx().await?;
        let pull: Option<String> = sqlx::query_scalar(
            "UPDATE fleet_join_tokens SET used_at = $1, used_by = $2
              WHERE hash = $3 AND used_at IS NULL AND expires_at > $1
              RETURNING pull",
        )
        .bind(now)
        .bind(node.name)
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(pull) = pull else {
            return Ok(JoinOutcome::BadToken);
        };
        let pull: Vec<String> = serde_json::from_str(&pull)
            .map_err(|e| CatalogError::Db(sqlx::Error::Decode(Box::new(e))))?;
        let made = sqlx::query(
            "INSERT INTO fleet_nodes (name, secret_hash, facts, registry, free_memory, joined_at,
                                      last_heartbeat, status)
             VALUES ($1, $2, $3, $4, $6, $5, $5, 'ready') ON CONFLICT (name) DO NOTHING",
        )
        .bind(node.name)
        .bind(node.secret_hash)
        .bind(node.facts)
        .bind(node.registry)
        .bind(now)
        .bind(node.free_memory)
        .execute(&mut *tx)
        .await?;
        if made.rows_affected() == 0 {
            return Ok(JoinOutcome::NameTaken);
        }
        let user = sqlx::query(
            "INSERT INTO users (name, password_hash, is_admin, kind, password_changed_at, created_at)
             VALUES ($1, $2, $3, 'robot', $4, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(node.robot)
        .bind(node.robot_hash)
        .bind(false)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if user.rows_affected() == 0 {
            return Ok(JoinOutcome::NameTaken);
        }
        for pattern in &pull {
            sqlx::query(
                "INSERT INTO grants (user_id, pattern, actions)
                 SELECT id, $1, 'pull' FROM users WHERE name = $2
                 ON CONFLICT (user_id, pattern) DO UPDATE SET actions = excluded.actions",
            )
            .bind(pattern)
            .bind(node.robot)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(JoinOutcome::Joined)
    })
    .await
}

pub async fn token_state(db: &Handle, hash: &str) -> Result<TokenState> {
    let row: Option<(i64, Option<i64>)> =
        sqlx::query_as("SELECT expires_at, used_at FROM fleet_join_tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&db.pool)
            .await?;
    Ok(match row {
        None => TokenState::Unknown,
        Some((_, Some(_))) => TokenState::Used,
        Some((expires, None)) if expires <= now_ms() => TokenState::Expired,
        Some(_) => TokenState::Valid,
    })
}

macro_rules! node_columns {
    () => {
        "name, secret_hash, facts, registry, free_memory, running_containers, joined_at,
         last_heartbeat, status"
    };
}

pub async fn node(db: &Handle, name: &str) -> Result<Option<NodeRow>> {
    Ok(sqlx::query_as::<_, NodeRow>(concat!(
        "SELECT ",
        node_columns!(),
        " FROM fleet_nodes WHERE name = $1"
    ))
    .bind(name)
    .fetch_optional(&db.pool)
    .await?)
}

pub async fn nodes(db: &Handle) -> Result<Vec<NodeRow>> {
    Ok(sqlx::query_as::<_, NodeRow>(concat!(
        "SELECT ",
        node_columns!(),
        " FROM fleet_nodes ORDER BY name"
    ))
    .fetch_all(&db.pool)
    .await?)
}

pub async fn heartbeat(
    db: &Handle,
    name: &str,
    facts: &str,
    free_memory: i64,
    running: i64,
) -> Result<Option<bool>> {
    let now = now_ms();
    let done = sqlx::query(
        "UPDATE fleet_nodes SET facts = $2, free_memory = $3, running_containers = $4,
                last_heartbeat = $5
          WHERE name = $1",
    )
    .bind(name)
    .bind(facts)
    .bind(free_memory)
    .bind(running)
    .bind(now)
    .execute(&db.pool)
    .await?;
    if done.rows_affected() == 0 {
        return Ok(None);
    }
    let back =
        sqlx::query("UPDATE fleet_nodes SET status = 'ready' WHERE name = $1 AND status = 'down'")
            .bind(name)
            .execute(&db.pool)
            .await?;
    Ok(Some(back.rows_affected() > 0))
}

pub async fn mark_down(db: &Handle, name: &str, cutoff: i64) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE fleet_nodes SET status = 'down'
          WHERE name = $1 AND status = 'ready' AND last_heartbeat < $2",
    )
    .bind(name)
    .bind(cutoff)
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn remove_node(db: &Handle, name: &str, robot: &str) -> Result<bool> {
    retry(|| async move {
        let mut tx = db.write_tx().await?;
        let gone = sqlx::query("DELETE FROM fleet_nodes WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM users WHERE name = $1 AND kind = 'robot'")
            .bind(robot)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    })
    .await
}

pub async fn create_deployment(
    db: &Handle,
    name: &str,
    spec: &str,
    replicas: &[(String, i64)],
    message: &str,
) -> Result<bool> {
    retry(|| async move {
        let now = now_ms();
        let mut tx = db.write_tx().await?;
        let made = sqlx::query(
            "INSERT INTO fleet_deployments (name, spec, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(spec)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if made.rows_affected() == 0 {
            return Ok(false);
        }
        for (id, ordinal) in replicas {
            sqlx::query(
                "INSERT INTO fleet_replicas (id, deployment, ordinal, node, generation, state,
                                             updated_at)
                 VALUES ($1, $2, $3, NULL, 0, 'pending', $4)",
            )
            .bind(id)
            .bind(name)
            .bind(*ordinal)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO fleet_events (deployment, time, replica, node, message)
             VALUES ($1, $2, NULL, NULL, $3)",
        )
        .bind(name)
        .bind(now)
        .bind(message)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    })
    .await
}

pub async fn deployment(db: &Handle, name: &str) -> Result<Option<DeploymentRow>> {
    Ok(sqlx::query_as::<_, DeploymentRow>(
        "SELECT name, spec, created_at FROM fleet_deployments WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(&db.pool)
    .await?)
}

pub async fn deployments(db: &Handle) -> Result<Vec<DeploymentRow>> {
    Ok(sqlx::query_as::<_, DeploymentRow>(
        "SELECT name, spec, created_at FROM fleet_deployments ORDER BY name",
    )
    .fetch_all(&db.pool)
    .await?)
}

pub async fn delete_deployment(db: &Handle, name: &str) -> Result<Option<Vec<String>>> {
    retry(|| async move {
        let mut tx = db.write_tx().await?;
        let nodes: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT node FROM fleet_replicas WHERE deployment = $1 AND node IS NOT NULL",
        )
        .bind(name)
        .fetch_all(&mut *tx)
        .await?;
        // Children first: SQLite enforces the cascade only with its
        // foreign_keys pragma, and this does not rely on it.
        sqlx::query("DELETE FROM fleet_events WHERE deployment = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM fleet_replicas WHERE deployment = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let gone = sqlx::query("DELETE FROM fleet_deployments WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        if gone.rows_affected() == 0 {
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(nodes))
    })
    .await
}

macro_rules! replica_columns {
    () => {
        "r.id, r.deployment, r.ordinal, r.node, r.generation, r.state, r.exit_code, r.reason,
         r.container_id, r.updated_at"
    };
}

pub async fn replicas(db: &Handle, deployment: Option<&str>) -> Result<Vec<ReplicaRow>> {
    let rows = match deployment {
        Some(d) => {
            sqlx::query_as::<_, ReplicaRow>(concat!(
                "SELECT ",
                replica_columns!(),
                " FROM fleet_replicas r WHERE r.deployment = $1
                  ORDER BY r.ordinal"
            ))
            .bind(d)
            .fetch_all(&db.pool)
            .await?
        }
        None => {
            sqlx::query_as::<_, ReplicaRow>(concat!(
                "SELECT ",
                replica_columns!(),
                " FROM fleet_replicas r ORDER BY r.deployment, r.ordinal"
            ))
            .fetch_all(&db.pool)
            .await?
        }
    };
    Ok(rows)
}

pub async fn replica(db: &Handle, id: &str) -> Result<Option<ReplicaRow>> {
    Ok(sqlx::query_as::<_, ReplicaRow>(concat!(
        "SELECT ",
        replica_columns!(),
        " FROM fleet_replicas r WHERE r.id = $1"
    ))
    .bind(id)
    .fetch_optional(&db.pool)
    .await?)
}

pub async fn node_assignments(db: &Handle, node: &str) -> Result<Vec<(ReplicaRow, String)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        replica: ReplicaRow,
        spec: String,
    }
    let rows = sqlx::query_as::<_, Row>(concat!(
        "SELECT ",
        replica_columns!(),
        ", d.spec
           FROM fleet_replicas r JOIN fleet_deployments d ON d.name = r.deployment
          WHERE r.node = $1 ORDER BY r.id"
    ))
    .bind(node)
    .fetch_all(&db.pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.replica, r.spec)).collect())
}

pub async fn place(db: &Handle, id: &str, generation: i64, node: &str) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE fleet_replicas
            SET node = $3, generation = generation + 1, state = 'assigned', exit_code = NULL,
                reason = NULL, container_id = NULL, updated_at = $4
          WHERE id = $1 AND generation = $2 AND node IS NULL",
    )
    .bind(id)
    .bind(generation)
    .bind(node)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn unplace(
    db: &Handle,
    id: &str,
    generation: i64,
    node: &str,
    reason: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE fleet_replicas
            SET node = NULL, generation = generation + 1, state = 'pending', exit_code = NULL,
                reason = $4, container_id = NULL, updated_at = $5
          WHERE id = $1 AND generation = $2 AND node = $3",
    )
    .bind(id)
    .bind(generation)
    .bind(node)
    .bind(reason)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn set_pending_reason(
    db: &Handle,
    id: &str,
    generation: i64,
    reason: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE fleet_replicas SET reason = $3, updated_at = $4
          WHERE id = $1 AND generation = $2 AND node IS NULL",
    )
    .bind(id)
    .bind(generation)
    .bind(reason)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn update_replica(db: &Handle, u: &ReplicaUpdate<'_>) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE fleet_replicas
            SET state = $4, exit_code = $5, reason = $6, container_id = $7, updated_at = $8
          WHERE id = $1 AND node = $2 AND generation = $3",
    )
    .bind(u.id)
    .bind(u.node)
    .bind(u.generation)
    .bind(u.state)
    .bind(u.exit_code)
    .bind(u.reason)
    .bind(u.container_id)
    .bind(now_ms())
    .execute(&db.pool)
    .await?;
    Ok(done.rows_affected() > 0)
}

pub async fn add_event(
    db: &Handle,
    deployment: &str,
    replica: Option<&str>,
    node: Option<&str>,
    message: &str,
) -> Result<()> {
    // Only for a deployment that still exists: an event racing its delete
    // is dropped rather than left behind without its deployment.
    sqlx::query(
        "INSERT INTO fleet_events (deployment, time, replica, node, message)
         SELECT name, $2, $3, $4, $5 FROM fleet_deployments WHERE name = $1",
    )
    .bind(deployment)
    .bind(now_ms())
    .bind(replica)
    .bind(node)
    .bind(message)
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "DELETE FROM fleet_events WHERE deployment = $1 AND id <= (
            SELECT id FROM fleet_events WHERE deployment = $1 ORDER BY id DESC
             LIMIT 1 OFFSET $2)",
    )
    .bind(deployment)
    .bind(MAX_EVENTS)
    .execute(&db.pool)
    .await?;
    Ok(())
}

pub async fn events(db: &Handle, deployment: &str, limit: i64) -> Result<Vec<EventRow>> {
    let mut rows = sqlx::query_as::<_, EventRow>(
        "SELECT time, replica, node, message FROM fleet_events WHERE deployment = $1
          ORDER BY id DESC LIMIT $2",
    )
    .bind(deployment)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.reverse();
    Ok(rows)
}
