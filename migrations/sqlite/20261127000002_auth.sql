-- Users (people and robots), their grants on repository patterns, and the
-- patterns anyone may pull anonymously.

CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    -- argon2id PHC string; the clear password is never stored.
    password_hash TEXT NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0,
    kind          TEXT NOT NULL DEFAULT 'user' CHECK (kind IN ('user', 'robot')),
    -- Bumped by `user passwd`: refresh tokens issued before it stop working.
    password_changed_at INTEGER NOT NULL,
    created_at    INTEGER NOT NULL
);

CREATE TABLE grants (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    pattern TEXT NOT NULL,
    -- comma-separated subset of pull,push,delete
    actions TEXT NOT NULL,
    PRIMARY KEY (user_id, pattern)
) WITHOUT ROWID;

CREATE TABLE public_patterns (
    pattern TEXT PRIMARY KEY
) WITHOUT ROWID;
