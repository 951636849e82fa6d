-- Snapshots of stream state: a cache so a command's cost does not grow with the length of
-- its stream. Never a source of truth: a snapshot folded by older code (another
-- snapshot_version) is ignored, and deleting every row only costs a slower first command.
CREATE TABLE snapshots (
    stream_id        text        PRIMARY KEY,
    version          bigint      NOT NULL,
    snapshot_version int         NOT NULL,
    state            bytea       NOT NULL,
    taken_at         timestamptz NOT NULL DEFAULT statement_timestamp()
);

DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON snapshots TO %I', current_setting('modelreg.app_role'));
END $$;
