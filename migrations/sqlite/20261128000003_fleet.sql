-- The fleet control plane (issue #7): join tokens, runner nodes,
-- deployments, their replicas and the history of each deployment. Times are
-- unix milliseconds. Keep in step with migrations/postgres/ (same file name,
-- same tables, columns and indexes).

-- A join token is kept as the SHA-256 of the token (hex); it is used once:
-- the join consumes it with `UPDATE ... WHERE used_at IS NULL AND
-- expires_at > now`, in the transaction that inserts the node.
CREATE TABLE fleet_join_tokens (
    hash       TEXT PRIMARY KEY,
    -- JSON array of the repository patterns joining nodes may pull.
    pull       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER,
    used_by    TEXT
);

-- A node's secret is random 256 bits, kept as its SHA-256 (hex).
CREATE TABLE fleet_nodes (
    name               TEXT PRIMARY KEY,
    secret_hash        TEXT NOT NULL,
    -- fleet-proto NodeFacts as JSON.
    facts              TEXT NOT NULL,
    -- host:port of this server as the node reached it when joining.
    registry           TEXT NOT NULL,
    free_memory        INTEGER NOT NULL DEFAULT 0,
    running_containers INTEGER NOT NULL DEFAULT 0,
    joined_at          INTEGER NOT NULL,
    last_heartbeat     INTEGER NOT NULL,
    status             TEXT NOT NULL DEFAULT 'ready' CHECK (status IN ('ready', 'down'))
);

CREATE TABLE fleet_deployments (
    name       TEXT PRIMARY KEY,
    -- fleet-proto DeploymentSpec as JSON (name filled in).
    spec       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- One row per replica; `node` NULL while unplaced (state 'pending').
CREATE TABLE fleet_replicas (
    id           TEXT PRIMARY KEY,
    deployment   TEXT NOT NULL REFERENCES fleet_deployments(name) ON DELETE CASCADE,
    ordinal      INTEGER NOT NULL,
    node         TEXT,
    generation   INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL,
    exit_code    INTEGER,
    reason       TEXT,
    container_id TEXT,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX fleet_replicas_deployment ON fleet_replicas(deployment, ordinal);
CREATE INDEX fleet_replicas_node ON fleet_replicas(node);

CREATE TABLE fleet_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment TEXT NOT NULL REFERENCES fleet_deployments(name) ON DELETE CASCADE,
    time       INTEGER NOT NULL,
    replica    TEXT,
    node       TEXT,
    message    TEXT NOT NULL
);
CREATE INDEX fleet_events_deployment ON fleet_events(deployment, id);
