-- The web catalog (server/src/browse.rs): the same columns, indexes and
-- triggers as migrations/sqlite/20261128000002_browse.sql (see there for
-- what each means). The counters are kept by row triggers, which run inside
-- the writing statement's transaction; the UPDATE of the repository row
-- takes its lock, so concurrent writers of one repository count exactly.
ALTER TABLE repositories ADD COLUMN pushed_at BIGINT NOT NULL DEFAULT 0;
ALTER TABLE repositories ADD COLUMN tag_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE repositories ADD COLUMN manifest_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE manifests ADD COLUMN total_size BIGINT;
ALTER TABLE manifests ADD COLUMN platforms TEXT COLLATE "C";

UPDATE repositories SET
    tag_count = (SELECT COUNT(*) FROM tags t WHERE t.repository_id = repositories.id),
    manifest_count = (SELECT COUNT(*) FROM manifests m WHERE m.repository_id = repositories.id),
    pushed_at = GREATEST(
        created_at,
        COALESCE((SELECT MAX(updated_at) FROM tags t WHERE t.repository_id = repositories.id), 0),
        COALESCE((SELECT MAX(created_at) FROM manifests m WHERE m.repository_id = repositories.id), 0));

CREATE INDEX repositories_pushed ON repositories(pushed_at DESC, name);
CREATE INDEX tags_pushed ON tags(repository_id, updated_at DESC, name);
CREATE INDEX manifests_unsummarized ON manifests(repository_id, digest) WHERE platforms IS NULL;

CREATE FUNCTION wharf_tags_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE repositories SET tag_count = tag_count + 1, pushed_at = GREATEST(pushed_at, NEW.updated_at)
         WHERE id = NEW.repository_id;
    ELSIF TG_OP = 'UPDATE' THEN
        UPDATE repositories SET pushed_at = GREATEST(pushed_at, NEW.updated_at)
         WHERE id = NEW.repository_id;
    ELSE
        UPDATE repositories SET tag_count = tag_count - 1 WHERE id = OLD.repository_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER tags_counted AFTER INSERT OR UPDATE OF manifest_digest, updated_at OR DELETE ON tags
    FOR EACH ROW EXECUTE FUNCTION wharf_tags_counted();

CREATE FUNCTION wharf_manifests_counted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE repositories SET manifest_count = manifest_count + 1,
                                pushed_at = GREATEST(pushed_at, NEW.created_at)
         WHERE id = NEW.repository_id;
    ELSE
        UPDATE repositories SET manifest_count = manifest_count - 1 WHERE id = OLD.repository_id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER manifests_counted AFTER INSERT OR DELETE ON manifests
    FOR EACH ROW EXECUTE FUNCTION wharf_manifests_counted();
