-- The web catalog (server/src/browse.rs): what listing a large catalog needs
-- is kept at write time, so a page is one indexed query and never a walk of
-- manifests or of the blob store.
--
-- repositories.pushed_at: the last time a manifest or a tag was written in
-- the repository (unix ms); repositories.tag_count and manifest_count: its
-- numbers of tags and manifests. They are kept by the triggers below on
-- every path that writes tags or manifests (a push, a tag moved, a tag or
-- manifest deleted, garbage collection's deletes and cascades).
ALTER TABLE repositories ADD COLUMN pushed_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE repositories ADD COLUMN tag_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE repositories ADD COLUMN manifest_count INTEGER NOT NULL DEFAULT 0;
-- manifests.total_size: compressed bytes of an image (config + layers); for
-- an index the sum over its children; NULL when it cannot be told.
-- manifests.platforms: JSON array of "os/arch[/variant]" (an image's from its
-- config, an index's from its descriptors). Both are computed by the
-- registry when a manifest is put; NULL platforms means "not computed yet"
-- (rows of an older catalog), which the server fills in at start
-- (`Registry::summarize_missing`).
ALTER TABLE manifests ADD COLUMN total_size INTEGER;
ALTER TABLE manifests ADD COLUMN platforms TEXT;

-- Backfill what SQL alone can tell.
UPDATE repositories SET
    tag_count = (SELECT COUNT(*) FROM tags t WHERE t.repository_id = repositories.id),
    manifest_count = (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = repositories.id),
    pushed_at = max(
        created_at,
        COALESCE((SELECT MAX(updated_at) FROM tags t WHERE t.repository_id = repositories.id), 0),
        COALESCE((SELECT MAX(created_at) FROM manifests m WHERE m.repository_id = repositories.id), 0));

CREATE INDEX repositories_pushed ON repositories(pushed_at DESC, name);
CREATE INDEX tags_pushed ON tags(repository_id, updated_at DESC, name);
CREATE INDEX manifests_unsummarized ON manifests(repository_id, digest) WHERE platforms IS NULL;

CREATE TRIGGER tags_insert_counted AFTER INSERT ON tags BEGIN
    UPDATE repositories SET tag_count = tag_count + 1, pushed_at = max(pushed_at, NEW.updated_at)
     WHERE id = NEW.repository_id;
END;
CREATE TRIGGER tags_update_pushed AFTER UPDATE OF manifest_digest, updated_at ON tags BEGIN
    UPDATE repositories SET pushed_at = max(pushed_at, NEW.updated_at)
     WHERE id = NEW.repository_id;
END;
CREATE TRIGGER tags_delete_counted AFTER DELETE ON tags BEGIN
    UPDATE repositories SET tag_count = tag_count - 1 WHERE id = OLD.repository_id;
END;
CREATE TRIGGER manifests_insert_pushed AFTER INSERT ON manifests BEGIN
    UPDATE repositories SET manifest_count = manifest_count + 1,
                            pushed_at = max(pushed_at, NEW.created_at)
     WHERE id = NEW.repository_id;
END;
CREATE TRIGGER manifests_delete_counted AFTER DELETE ON manifests BEGIN
    UPDATE repositories SET manifest_count = manifest_count - 1 WHERE id = OLD.repository_id;
END;
