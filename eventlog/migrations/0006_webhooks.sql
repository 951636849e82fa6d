-- HTTP webhooks (issue 16). Subscriptions are events (`webhook:{id}` streams); what is here
-- is what must not be in an event, and the operational state of delivery.
--
-- webhook_secrets: each subscription's signing secret, AES-256-GCM encrypted under a key
-- derived from the token pepper (outside the database), the subscription id bound as
-- associated data so a row moved to another subscription fails to decrypt. Unlike a
-- token secret it must be recoverable: the registry signs every delivery with it.
CREATE TABLE webhook_secrets (
    subscription_id text        PRIMARY KEY,
    nonce           bytea       NOT NULL CHECK (length(nonce) = 12),
    ciphertext      bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- Per subscription, the log position up to which every wanted event is settled (delivered
-- or dead-lettered): delivery resumes after it, so nothing is skipped across restarts.
CREATE TABLE webhook_cursors (
    subscription_id text        PRIMARY KEY,
    log_position    bigint      NOT NULL CHECK (log_position >= 0),
    updated_at      timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- One row per (subscription, event) beyond or near the cursor: its state and last attempt.
-- Derived, operational data: rows settled behind the cursor are deleted after the retention.
CREATE TABLE webhook_deliveries (
    subscription_id text             NOT NULL,
    log_position    bigint           NOT NULL,
    event_id        uuid             NOT NULL,
    event_type      text             NOT NULL,
    model_id        text             NOT NULL,
    status          text             NOT NULL
        CHECK (status IN ('pending', 'delivered', 'dead', 'redeliver')),
    attempts        int              NOT NULL DEFAULT 0,
    response_code   int,
    latency_ms      double precision,
    error           text,
    first_attempt_at timestamptz,
    last_attempt_at timestamptz,
    next_attempt_at timestamptz,
    PRIMARY KEY (subscription_id, log_position)
);
CREATE INDEX webhook_deliveries_status ON webhook_deliveries (subscription_id, status);

-- The delivery log: every attempt, its response code (none: no answer), latency and error.
CREATE TABLE webhook_attempts (
    id              bigserial        PRIMARY KEY,
    subscription_id text             NOT NULL,
    log_position    bigint           NOT NULL,
    attempt         int              NOT NULL,
    attempted_at    timestamptz      NOT NULL,
    response_code   int,
    latency_ms      double precision NOT NULL,
    error           text,
    delivered       boolean          NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (subscription_id, log_position, id);

DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON webhook_secrets TO %I', current_setting('modelreg.app_role'));
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_cursors, webhook_deliveries, webhook_attempts TO %I', current_setting('modelreg.app_role'));
    EXECUTE format('GRANT USAGE ON SEQUENCE webhook_attempts_id_seq TO %I', current_setting('modelreg.app_role'));
END $$;
