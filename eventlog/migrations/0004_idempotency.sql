-- Responses to POSTs that carried an Idempotency-Key, per principal: a retry with the same
-- key and the same request gets the first response again; the same key with another
-- request is refused. This is a cache of answers, not history (the events are history),
-- so old rows may be deleted freely.
CREATE TABLE idempotency_keys (
    principal    text        NOT NULL,
    key          text        NOT NULL,
    request_hash bytea       NOT NULL,
    status       int         NOT NULL,
    headers      jsonb       NOT NULL,
    body         bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON idempotency_keys TO %I', current_setting('modelreg.app_role'));
END $$;
