-- What the fleet's control plane last told this node to run (queries in
-- runner/src/daemon/fleet/store.rs). Replaced whole, in one transaction, on
-- every Assign; read at daemon start so the node reconciles from it while
-- the server is unreachable.
CREATE TABLE fleet_replicas (
    id         TEXT PRIMARY KEY NOT NULL,   -- <deployment>.<ordinal>, the container's name
    deployment TEXT NOT NULL,
    generation INTEGER NOT NULL,
    spec       TEXT NOT NULL                -- wharf_fleet_proto::ReplicaSpec as JSON
);
