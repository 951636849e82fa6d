-- The event store: stream heads, the append-only event table, the sealed global log.
--
-- Appends run concurrently (one row lock per stream). A Postgres identity value is drawn at
-- insert but becomes visible at commit, so `seq` is NOT a safe read cursor. The single
-- sealer copies events of finished transactions into `event_log`, which has contiguous
-- positions and the global hash chain; every reader tails `event_log` instead.

CREATE TABLE streams (
    stream_id   text        PRIMARY KEY,
    stream_type text        NOT NULL,
    version     bigint      NOT NULL CHECK (version >= 0),
    -- xid of the last appender: an append from an older transaction must retry so that
    -- per-stream order equals (tx_id, seq) order, which is the order the sealer uses.
    last_tx_id  xid8        NOT NULL,
    last_hash   bytea       NOT NULL CHECK (length(last_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    updated_at  timestamptz NOT NULL DEFAULT statement_timestamp()
);

CREATE TABLE events (
    seq             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_id        uuid        NOT NULL UNIQUE,
    stream_id       text        NOT NULL,
    stream_position bigint      NOT NULL CHECK (stream_position >= 1),
    event_type      text        NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT statement_timestamp(),
    -- The exact canonical bytes that were hashed; jsonb would normalise them away.
    envelope        bytea       NOT NULL,
    stream_hash     bytea       NOT NULL CHECK (length(stream_hash) = 32),
    UNIQUE (stream_id, stream_position)
);
CREATE INDEX events_tx_seq ON events (tx_id, seq);

CREATE TABLE event_log (
    log_position bigint      PRIMARY KEY,
    seq          bigint      NOT NULL UNIQUE,
    stream_id    text        NOT NULL,
    event_type   text        NOT NULL,
    log_hash     bytea       NOT NULL CHECK (length(log_hash) = 32),
    -- Monotone across batches, so "the log as it stood at time T" is a prefix.
    sealed_at    timestamptz NOT NULL
);
CREATE INDEX event_log_sealed_at ON event_log (sealed_at, log_position);

CREATE TABLE sealer_state (
    id                int         PRIMARY KEY CHECK (id = 1),
    last_log_position bigint      NOT NULL,
    last_tx_id        xid8        NOT NULL,
    last_seq          bigint      NOT NULL,
    last_log_hash     bytea       NOT NULL CHECK (length(last_log_hash) = 32),
    sealed_at         timestamptz NOT NULL
);
INSERT INTO sealer_state VALUES (1, 0, '0'::xid8, 0, '\x0000000000000000000000000000000000000000000000000000000000000000', '-infinity');

-- Unique names claimed by streams (model names -> model stream), written in the same
-- transaction as the append that claims or releases them. A released key keeps its row
-- (stream_id NULL) with the releasing xid: a claim from an older transaction must retry,
-- or the log (in xid order) could show the new owner before the old one let go.
CREATE TABLE unique_keys (
    key       text PRIMARY KEY,
    stream_id text,
    tx_id     xid8 NOT NULL
);
CREATE INDEX unique_keys_stream ON unique_keys (stream_id);

CREATE FUNCTION forbid_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % rejected', TG_TABLE_NAME, TG_OP USING ERRCODE = '42501';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER event_log_append_only BEFORE UPDATE OR DELETE ON event_log
    FOR EACH ROW EXECUTE FUNCTION forbid_mutation();
CREATE TRIGGER event_log_no_truncate BEFORE TRUNCATE ON event_log
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_mutation();

-- Append a batch to one stream: one statement, one round trip.
--
-- The stream head is read without a lock and moved by one conditional UPDATE (version and
-- xid in its WHERE): a concurrent appender at the same version blocks on the row, then
-- finds the version moved and updates nothing. Only then are events inserted, so an
-- optimistic-concurrency loser draws no identity value. On a lost race the function looks
-- for the same event ids among committed events (a retry after a lost answer) and
-- returns the first result; re-sending ids whose version check passes fails on the
-- unique event id, which the caller resolves the same way.
--
-- Errors: MR409 version conflict (DETAIL = actual version), MR422 event ids partly
-- recorded already, MR423 unique key taken (DETAIL = key), 40001 stale xid (retry).
CREATE FUNCTION append_events(
    p_stream_id        text,
    p_stream_type      text,
    p_expected_version bigint,
    p_event_ids        uuid[],
    p_event_types      text[],
    p_envelopes        bytea[],
    p_claim_keys       text[],
    p_release_keys     text[],
    p_prev_hash        bytea DEFAULT NULL,
    p_hashes           bytea[] DEFAULT NULL
) RETURNS TABLE (stream_version bigint, last_seq bigint, tx_id xid8, replayed boolean, last_hash bytea)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n          int  := coalesce(cardinality(p_event_ids), 0);
    v_tx       xid8 := pg_current_xact_id();
    v_version  bigint;
    v_last_tx  xid8;
    v_hash     bytea;
    v_hashes   bytea[] := '{}';
    v_max_seq  bigint;
    v_key      text;
    v_owner    text;
BEGIN
    IF n = 0 OR cardinality(p_event_types) <> n OR cardinality(p_envelopes) <> n THEN
        RAISE EXCEPTION 'an append needs 1..n events with as many types and envelopes'
            USING ERRCODE = '22023';
    END IF;

    SELECT s.version, s.last_hash INTO v_version, v_hash
      FROM streams s WHERE s.stream_id = p_stream_id;
    IF NOT FOUND THEN
        IF p_expected_version = 0 THEN
            v_version := 0;
            v_hash := '\x0000000000000000000000000000000000000000000000000000000000000000';
        ELSE
            RETURN QUERY SELECT * FROM append_conflict(p_stream_id, p_expected_version, p_event_ids);
            RETURN;
        END IF;
    END IF;
    IF v_version <> p_expected_version THEN
        RETURN QUERY SELECT * FROM append_conflict(p_stream_id, p_expected_version, p_event_ids);
        RETURN;
    END IF;

    IF p_hashes IS NOT NULL AND cardinality(p_hashes) = n AND p_prev_hash = v_hash THEN
        -- The caller chained the same bytes from the head it knew, and that head is the
        -- stream's: take its hashes (verify recomputes every one from storage anyway).
        v_hashes := p_hashes;
        v_hash := p_hashes[n];
    ELSE
        FOR i IN 1..n LOOP
            v_hash := sha256('\x01'::bytea || v_hash || sha256('\x00'::bytea || p_envelopes[i]));
            v_hashes := v_hashes || v_hash;
        END LOOP;
    END IF;

    IF p_expected_version = 0 THEN
        INSERT INTO streams AS s (stream_id, stream_type, version, last_tx_id, last_hash)
        VALUES (p_stream_id, p_stream_type, n, v_tx, v_hash)
        ON CONFLICT (stream_id) DO NOTHING;
    ELSE
        UPDATE streams s
           SET version = p_expected_version + n, last_tx_id = v_tx, last_hash = v_hash,
               updated_at = statement_timestamp()
         WHERE s.stream_id = p_stream_id AND s.version = p_expected_version AND s.last_tx_id <= v_tx;
    END IF;
    IF NOT FOUND THEN
        -- Another appender got there first, or this transaction is older than the last
        -- appender (an older xid must not publish after a newer one: retry with a new one).
        SELECT s.version, s.last_tx_id INTO v_version, v_last_tx FROM streams s WHERE s.stream_id = p_stream_id;
        IF v_version = p_expected_version AND v_last_tx > v_tx THEN
            RAISE EXCEPTION 'transaction is older than the last append to %; retry', p_stream_id
                USING ERRCODE = '40001';
        END IF;
        RETURN QUERY SELECT * FROM append_conflict(p_stream_id, p_expected_version, p_event_ids);
        RETURN;
    END IF;

    IF p_release_keys IS NOT NULL THEN
        UPDATE unique_keys u SET stream_id = NULL, tx_id = v_tx
         WHERE u.key = ANY (p_release_keys) AND u.stream_id = p_stream_id;
    END IF;
    IF p_claim_keys IS NOT NULL THEN
        FOREACH v_key IN ARRAY p_claim_keys LOOP
            INSERT INTO unique_keys AS u (key, stream_id, tx_id) VALUES (v_key, p_stream_id, v_tx)
            ON CONFLICT (key) DO UPDATE SET stream_id = p_stream_id, tx_id = v_tx
             WHERE u.stream_id IS NULL AND u.tx_id <= v_tx;
            IF NOT FOUND THEN
                SELECT u.stream_id INTO v_owner FROM unique_keys u WHERE u.key = v_key;
                IF v_owner IS NULL THEN
                    RAISE EXCEPTION '% was released by a newer transaction; retry', v_key
                        USING ERRCODE = '40001';
                ELSIF v_owner <> p_stream_id THEN
                    RAISE EXCEPTION '% is taken', v_key USING ERRCODE = 'MR423', DETAIL = v_key;
                END IF;
            END IF;
        END LOOP;
    END IF;

    WITH inserted AS (
        INSERT INTO events (event_id, stream_id, stream_position, event_type, envelope, stream_hash)
        SELECT u.id, p_stream_id, p_expected_version + u.ord, u.typ, u.env, u.hash
          FROM unnest(p_event_ids, p_event_types, p_envelopes, v_hashes)
               WITH ORDINALITY AS u(id, typ, env, hash, ord)
         ORDER BY u.ord
        RETURNING seq
    )
    SELECT max(inserted.seq) INTO v_max_seq FROM inserted;
    RETURN QUERY SELECT p_expected_version + n, v_max_seq, v_tx, false, v_hash;
END $$;

-- The slow path of an append that lost its version check: the same event ids already
-- recorded as one contiguous batch of this stream mean a retry (answer as the first
-- time); some of them mean a client error; none mean a plain conflict.
CREATE FUNCTION append_conflict(p_stream_id text, p_expected_version bigint, p_event_ids uuid[])
RETURNS TABLE (stream_version bigint, last_seq bigint, tx_id xid8, replayed boolean, last_hash bytea)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n       int := cardinality(p_event_ids);
    v_found int;
    v_min   bigint;
    v_seq   bigint;
    v_tx    xid8;
    v_same  boolean;
    v_now   bigint;
BEGIN
    SELECT count(*), min(e.stream_position), max(e.seq), max(e.tx_id), bool_and(e.stream_id = p_stream_id)
      INTO v_found, v_min, v_seq, v_tx, v_same
      FROM events e WHERE e.event_id = ANY (p_event_ids);
    IF v_found = n AND v_same AND NOT EXISTS (
        SELECT 1 FROM events e
         WHERE e.event_id = ANY (p_event_ids)
           AND e.stream_position <> v_min + array_position(p_event_ids, e.event_id) - 1
    ) THEN
        RETURN QUERY SELECT v_min + n - 1, v_seq, v_tx, true,
            (SELECT e.stream_hash FROM events e WHERE e.seq = v_seq);
        RETURN;
    END IF;
    IF v_found > 0 THEN
        RAISE EXCEPTION 'some of these event ids are recorded already, not as this batch'
            USING ERRCODE = 'MR422';
    END IF;
    SELECT s.version INTO v_now FROM streams s WHERE s.stream_id = p_stream_id;
    RAISE EXCEPTION 'stream % is at version %, not %', p_stream_id, coalesce(v_now, 0), p_expected_version
        USING ERRCODE = 'MR409', DETAIL = coalesce(v_now, 0)::text;
END $$;

-- Seal one batch the sealer read below the transaction horizon. The CAS on the sealer
-- cursor is the fence: a second sealer blocks on the row, then finds the cursor moved and
-- fails (MR409) before writing anything, so the chain can never fork.
CREATE FUNCTION seal_batch(
    p_prev_position bigint,
    p_seqs          bigint[],
    p_stream_ids    text[],
    p_event_types   text[],
    p_log_hashes    bytea[],
    p_last_tx       xid8,
    p_last_seq      bigint,
    p_channel       text
) RETURNS TABLE (log_position bigint, sealed_at timestamptz)
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
DECLARE
    n        int := cardinality(p_seqs);
    v_new    bigint := p_prev_position + n;
    v_sealed timestamptz;
BEGIN
    UPDATE sealer_state s
       SET last_log_position = v_new, last_tx_id = p_last_tx, last_seq = p_last_seq,
           last_log_hash = p_log_hashes[n], sealed_at = greatest(s.sealed_at, clock_timestamp())
     WHERE s.id = 1 AND s.last_log_position = p_prev_position
    RETURNING s.sealed_at INTO v_sealed;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'another sealer moved the log past %', p_prev_position
            USING ERRCODE = 'MR409';
    END IF;
    INSERT INTO event_log (log_position, seq, stream_id, event_type, log_hash, sealed_at)
    SELECT p_prev_position + u.ord, u.seq, u.sid, u.typ, u.hash, v_sealed
      FROM unnest(p_seqs, p_stream_ids, p_event_types, p_log_hashes)
           WITH ORDINALITY AS u(seq, sid, typ, hash, ord);
    PERFORM pg_notify(p_channel, v_new::text);
    RETURN QUERY SELECT v_new, v_sealed;
END $$;

DO $$
DECLARE app text := current_setting('modelreg.app_role');
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON streams TO %I', app);
    EXECUTE format('GRANT SELECT, INSERT ON events, event_log TO %I', app);
    EXECUTE format('GRANT SELECT, UPDATE ON sealer_state TO %I', app);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON unique_keys TO %I', app);
    EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON events, event_log FROM %I', app);
END $$;
