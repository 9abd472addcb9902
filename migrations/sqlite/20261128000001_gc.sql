-- Online garbage collection (server/src/gc.rs).
--
-- blobs.state: 'live' (bytes in place, may be linked and referenced),
-- 'pending' (a push has claimed the digest and is placing its bytes; not
-- visible to pulls or mounts yet), 'deleting' (GC owns the row and is
-- removing the object; pushes of the digest wait until the row is gone).
-- blobs.used_at: the last time a push, mount or manifest put relied on the
-- blob; GC only collects blobs whose used_at is older than its grace period.
-- manifests.used_at: the same for manifests (a re-push, a tag, an index that
-- names it as a child).
ALTER TABLE blobs ADD COLUMN state TEXT NOT NULL DEFAULT 'live'
    CHECK (state IN ('live', 'pending', 'deleting'));
ALTER TABLE blobs ADD COLUMN used_at INTEGER NOT NULL DEFAULT 0;
-- blobs.incarnation: set when the row is made, unchanged while it lives. A
-- push links the bytes it placed only into the incarnation it claimed, so a
-- row that was collected (claim older than the grace period) and made again
-- by another push is never made live by the first one.
ALTER TABLE blobs ADD COLUMN incarnation TEXT NOT NULL DEFAULT '';
UPDATE blobs SET used_at = created_at;

ALTER TABLE manifests ADD COLUMN used_at INTEGER NOT NULL DEFAULT 0;
UPDATE manifests SET used_at = created_at;

-- One row per lease name ('gc'): which process may run the collector, and
-- until when. Taken with a conditional upsert, renewed while running.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
