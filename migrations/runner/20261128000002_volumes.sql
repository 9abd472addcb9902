-- The runner's volumes (queries in runner/src/daemon/volumes.rs). A volume's
-- data lives in <root>/volumes/<name>/_data (docker's layout); a row exists
-- from its creation (`volume create`, or the first container naming it) to
-- `volume rm` (or, for an anonymous one, `rm -v` / `--rm` of its container).
CREATE TABLE volumes (
    name       TEXT PRIMARY KEY NOT NULL,
    created_at TEXT NOT NULL,
    labels     TEXT NOT NULL DEFAULT '{}',   -- JSON object
    anonymous  INTEGER NOT NULL DEFAULT 0    -- made for `-v /path`
);

-- Which containers use which volume, and where: a volume with a row here
-- cannot be removed. Recorded at container create, gone with the container.
CREATE TABLE volume_users (
    volume       TEXT NOT NULL REFERENCES volumes (name),
    container_id TEXT NOT NULL REFERENCES containers (id) ON DELETE CASCADE,
    destination  TEXT NOT NULL,
    PRIMARY KEY (container_id, destination)
);
CREATE INDEX volume_users_by_volume ON volume_users (volume);
