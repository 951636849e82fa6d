-- Publication to NATS JetStream: the relay's checkpoint, and the consumer kit's inbox.
--
-- The sealed event_log IS the outbox; nothing is copied. A relay remembers how far it has
-- published per NATS stream (publisher = 'nats:<STREAM>'), moved only by compare-and-set so
-- two relays that both think they lead can never both advance it.

CREATE TABLE publication_checkpoints (
    publisher       text        PRIMARY KEY,
    -- The highest log position below which every event has a PubAck (a contiguous prefix).
    log_position    bigint      NOT NULL DEFAULT 0 CHECK (log_position >= 0),
    -- JetStream sequence acknowledged for that position; for operators cross-checking.
    nats_stream_seq bigint,
    updated_at      timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- The consumer kit's Postgres de-duplication store: one row per (consumer, event) handled,
-- inserted in the same transaction as the handler's own writes, so a redelivered event
-- finds its row and is skipped (exactly-once effect for database side effects).
CREATE TABLE consumer_inbox (
    consumer     text        NOT NULL,
    event_id     uuid        NOT NULL,
    handled_at   timestamptz NOT NULL DEFAULT statement_timestamp(),
    PRIMARY KEY (consumer, event_id)
);

DO $$
DECLARE app text := current_setting('modelreg.app_role');
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON publication_checkpoints TO %I', app);
    -- DELETE only so an operator job running as the app can prune rows older than any
    -- possible redelivery; the relay and the kit never delete.
    EXECUTE format('GRANT SELECT, INSERT, DELETE ON consumer_inbox TO %I', app);
END $$;
