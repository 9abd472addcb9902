-- The runner's containers (queries in runner/src/daemon/containers.rs).
-- A row exists from `create` to `rm`; the container's files live in
-- <root>/containers/<id>/.
CREATE TABLE containers (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    -- The image as the user named it, and the image id it resolved to.
    image TEXT NOT NULL,
    image_id TEXT NOT NULL,
    -- The create request (api::CreateRequest) as JSON.
    request TEXT NOT NULL,
    -- The process: the first word and the rest (docker's Path and Args).
    path TEXT NOT NULL,
    args TEXT NOT NULL,
    stop_signal TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('created', 'running', 'exited')),
    -- While running: the container's pid and its monitor's pid + start time
    -- (clock ticks since boot, so a reused pid is not taken for it).
    pid INTEGER NOT NULL DEFAULT 0,
    shim_pid INTEGER NOT NULL DEFAULT 0,
    shim_start INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER NOT NULL DEFAULT 0,
    oom_killed INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL,
    started_at TEXT NOT NULL DEFAULT '',
    finished_at TEXT NOT NULL DEFAULT '',
    restart_count INTEGER NOT NULL DEFAULT 0
);
