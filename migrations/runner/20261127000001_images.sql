-- The runner's images (written by daemon/images.rs).
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY NOT NULL
);
