-- MLflow's JSON of a model version (its REST API's ModelVersion), rendered whenever a row of
-- a model_versions view is written, so a search page is its rows' text joined: neither
-- Postgres nor the API builds 100 objects per read. A BEFORE trigger runs on every write
-- path (registration, a change of stage, alias, tag or description, a rename copied onto
-- the rows, a snapshot restored), so the text never lags the row it sits in.
--
-- The rendering is service.api.mlflow.wire.model_version's, to the byte where a client can
-- tell: fields at their default ("", an empty list) are left out; tags sorted by key and
-- aliases by name in code point order (C collation); timestamps in whole milliseconds.
-- tests/integration/test_mlflow_search_shapes.py compares the two for every shape.
CREATE FUNCTION mlflow_version_json() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.mlflow_json := json_strip_nulls(json_build_object(
        'name', NEW.model_name,
        'version', NEW.version::text,
        'creation_timestamp', (extract(epoch FROM NEW.created_at) * 1000000)::bigint / 1000,
        'last_updated_timestamp', (extract(epoch FROM NEW.updated_at) * 1000000)::bigint / 1000,
        'status', 'READY',
        'user_id', nullif(NEW.registered_by, ''),
        'current_stage', CASE NEW.stage
            WHEN 'development' THEN 'None'
            WHEN 'staging' THEN 'Staging'
            WHEN 'production' THEN 'Production'
            WHEN 'archived' THEN 'Archived'
            ELSE NEW.stage END,
        'description', nullif(NEW.description, ''),
        'source', coalesce(NEW.external_source,
            'mlflow-artifacts:/modelreg/models/' || NEW.model_name || '/versions/' || NEW.version),
        'run_id', nullif(NEW.run_id, ''),
        'run_link', nullif(NEW.run_url, ''),
        'tags', (SELECT json_agg(json_build_object('key', t.key, 'value', t.value)
                                 ORDER BY t.key COLLATE "C")
                 FROM jsonb_each_text(NEW.tags) t),
        'aliases', (SELECT json_agg(a ORDER BY a COLLATE "C") FROM unnest(NEW.aliases) a)
    ))::text;
    RETURN NEW;
END $$;
