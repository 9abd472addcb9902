//! The desired replicas in the runner's own catalog (`fleet_replicas`,
//! migrations/runner/20261128000004_fleet.sql): replaced whole in one
//! transaction on every Assign, read at start, so after a daemon restart
//! or during a server outage the node reconciles from what it was last
//! told. Only SQL here; called by `agent`.

use sqlx::SqlitePool;
use wharf_fleet_proto::ReplicaSpec;

use crate::daemon::Result;

/// Replaces the desired set.
pub async fn replace(pool: &SqlitePool, replicas: &[ReplicaSpec]) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM fleet_replicas")
        .execute(&mut *tx)
        .await?;
    for r in replicas {
        let spec = serde_json::to_string(r).map_err(crate::daemon::Error::internal)?;
        sqlx::query(
            "INSERT INTO fleet_replicas (id, deployment, generation, spec) VALUES (?, ?, ?, ?)",
        )
        .bind(&r.id)
        .bind(&r.deployment)
        .bind(i64::try_from(r.generation).unwrap_or(i64::MAX))
        .bind(spec)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The desired set, in id order. A row that no longer parses is skipped
/// (logged): the next Assign replaces it.
pub async fn load(pool: &SqlitePool) -> Result<Vec<ReplicaSpec>> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, spec FROM fleet_replicas ORDER BY id")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, spec)| match serde_json::from_str(&spec) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(replica = %id, error = %e, "stored replica spec unreadable; skipped");
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, generation: u64) -> ReplicaSpec {
        ReplicaSpec {
            id: id.into(),
            deployment: "web".into(),
            generation,
            image: "reg:5000/web:1".into(),
            container: wharf_fleet_proto::ContainerSpec {
                env: vec![],
                ports: vec!["8080:80".into()],
                memory_bytes: Some(64 << 20),
                nano_cpus: None,
                restart: Some("always".into()),
                cmd: vec!["sh".into()],
            },
        }
    }

    #[tokio::test]
    async fn the_desired_set_is_replaced_whole_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::daemon::catalog::open(dir.path()).await.unwrap();
        assert!(load(&pool).await.unwrap().is_empty());
        replace(&pool, &[spec("web.1", 1), spec("web.0", 1)])
            .await
            .unwrap();
        replace(&pool, &[spec("web.0", 2)]).await.unwrap();
        pool.close().await;
        let pool = crate::daemon::catalog::open(dir.path()).await.unwrap();
        assert_eq!(load(&pool).await.unwrap(), vec![spec("web.0", 2)]);
        // A failing replacement (a duplicate id) leaves the old set.
        assert!(
            replace(&pool, &[spec("a.0", 1), spec("a.0", 1)])
                .await
                .is_err()
        );
        assert_eq!(load(&pool).await.unwrap(), vec![spec("web.0", 2)]);
    }
}
