-- A view's snapshot is stored in chunks of rows, one row of view_snapshots each
-- (projections.snapshots.CHUNK_ROWS). One text[] per table could not hold a large
-- registry: with 1,000,000 versions the array of model_versions rows passed Postgres's
-- limit of 1 GiB per value, and every snapshot failed (bench/scale.py, 10,000,000 events).
-- Rows stored before this migration are chunk 0 of their table, which reads the same.
ALTER TABLE view_snapshots ADD COLUMN chunk int NOT NULL DEFAULT 0;
ALTER TABLE view_snapshots DROP CONSTRAINT view_snapshots_pkey;
ALTER TABLE view_snapshots ADD PRIMARY KEY (projection, fingerprint, log_position, table_name, chunk);
