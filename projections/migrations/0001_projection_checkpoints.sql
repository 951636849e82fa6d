-- Projection bookkeeping. A projection's tables exist once per generation
-- (<table>__g<n>); a view named <table> points at the live generation, so a rebuild fills
-- new tables while the live ones keep serving, then switches the views in one transaction.
CREATE TABLE projection_checkpoints (
    projection   text        NOT NULL,
    generation   int         NOT NULL,
    code_version int         NOT NULL,
    status       text        NOT NULL CHECK (status IN ('building', 'live', 'retired')),
    log_position bigint      NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (projection, generation)
);
CREATE UNIQUE INDEX projection_checkpoints_one_live ON projection_checkpoints (projection) WHERE status = 'live';
CREATE UNIQUE INDEX projection_checkpoints_one_building ON projection_checkpoints (projection) WHERE status = 'building';

-- Time travel folds one model's streams up to a position; this finds them without a scan.
CREATE INDEX event_log_stream ON event_log (stream_id COLLATE "C", log_position);

DO $$
DECLARE app text := current_setting('modelreg.app_role');
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON projection_checkpoints TO %I', app);
    -- The runner creates each generation's tables and views itself, as the app role.
    EXECUTE format('GRANT CREATE ON SCHEMA %I TO %I', current_schema(), app);
END $$;
