-- The runner's images (written by daemon/images.rs). An image is known by
-- its id, the digest of its config ("sha256:<hex>", docker's image id); it
-- is recorded only once its pull completed, in one transaction with its
-- names and layers.

CREATE TABLE images (
    id              TEXT PRIMARY KEY NOT NULL,  -- sha256:<config hex>
    manifest_digest TEXT NOT NULL,              -- the platform manifest pulled
    index_digest    TEXT,                       -- the index it came from, if any
    config          TEXT NOT NULL,              -- the config JSON as pulled
    size            INTEGER NOT NULL,           -- bytes of the unpacked layers
    created         INTEGER NOT NULL,           -- config's "created", unix seconds
    pulled_at       INTEGER NOT NULL            -- unix seconds
);

-- Names pointing at images: "registry/repo:tag" (kind 'tag', at most one
-- image per name: a new pull moves it) and "registry/repo@sha256:..."
-- (kind 'digest', the manifest or index digest it was pulled by).
CREATE TABLE image_names (
    name     TEXT PRIMARY KEY NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
    image_id TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE
);
CREATE INDEX image_names_by_image ON image_names (image_id);

-- The image's layers, bottom first, by compressed digest (the store's key),
-- with the unpacked size of each. A layer dir is deleted from the store
-- only when no row here names it any more.
CREATE TABLE image_layers (
    image_id TEXT NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    digest   TEXT NOT NULL,
    size     INTEGER NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE INDEX image_layers_by_digest ON image_layers (digest);
