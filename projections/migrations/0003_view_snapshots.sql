-- Snapshots of the registry views at a log position, so whole-registry time travel folds
-- only the events after the nearest snapshot (projections.snapshots). Derived data, never
-- a source of truth: a snapshot is keyed by the fingerprint of the projection code that
-- folded it (another fingerprint is never read), and deleting every row changes no answer,
-- only makes the next as_of read fold from position 0.
--
-- One row per (projection, fingerprint, position, table): the table's rows as their
-- Postgres text form, which converts back to the same row exactly. Every table of every
-- projection of one snapshot is written in one transaction, so a snapshot is complete or
-- absent.
CREATE TABLE view_snapshots (
    projection   text        NOT NULL,
    fingerprint  text        NOT NULL,
    log_position bigint      NOT NULL CHECK (log_position > 0),
    table_name   text        NOT NULL,
    row_count    bigint      NOT NULL,
    rows         text[]      NOT NULL,
    taken_at     timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (projection, fingerprint, log_position, table_name)
);

DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON view_snapshots TO %I', current_setting('modelreg.app_role'));
END $$;
