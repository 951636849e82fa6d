-- A read that must wait for the views (read-your-writes, or a model's latest sealed event
-- not applied yet) polled the checkpoints: first after 5 ms, then ever more slowly. The
-- projection worker applies a write in a millisecond or two, so a read right after a
-- write (MLflow's client reads the model before each version write) waited 5 to 12 ms
-- for nothing. Each statement that moves checkpoints now NOTIFYs
-- `modelreg_views_<schema>` when it commits, whoever runs it (the worker, a rebuild), and
-- the API processes wake their waiting reads on it (eventlog.freshness).
CREATE FUNCTION notify_views_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(left('modelreg_views_' || TG_TABLE_SCHEMA, 63), '');
    RETURN NULL;
END $$;

CREATE TRIGGER projection_checkpoints_notify AFTER UPDATE OF log_position
    ON projection_checkpoints FOR EACH STATEMENT EXECUTE FUNCTION notify_views_moved();
