-- Restart policies (runner/src/daemon/restart.rs): whether a user stopped or
-- killed the container, which `unless-stopped` and `on-failure` respect and a
-- start by hand clears.
ALTER TABLE containers ADD COLUMN manually_stopped INTEGER NOT NULL DEFAULT 0;
