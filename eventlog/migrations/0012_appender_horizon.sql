-- The sealer's horizon, from the appenders only (eventlog.sealer).
--
-- The sealer seals the events of transactions that have ended. It used to take "ended"
-- from the snapshot's xmin: the oldest transaction id still running anywhere in the
-- cluster. So any open transaction that had written anything (a projection's batch, a
-- job in another database, a session left idle in a transaction) held every seal back,
-- and with it every write waiting for its position.
--
-- Now each appending transaction announces itself before it has a transaction id: it
-- takes this schema's appender lock (a shared transaction-level advisory lock, held to
-- its end) and only then draws its id. The sealer reads the lock table (one consistent
-- copy) and holds back only at the ids of transactions holding that lock; the read
-- itself runs in a later statement, whose snapshot sees every appender below the horizon
-- as ended. A statement trigger refuses rows in `events` from a transaction that did not
-- announce itself, so no writer can slip under the horizon unannounced.

CREATE FUNCTION append_lock_key() RETURNS bigint
LANGUAGE sql IMMUTABLE SET search_path FROM CURRENT AS $$
    SELECT hashtextextended('modelreg-appenders:' || current_schema(), 0)
$$;

-- Announce an append in this transaction (idempotent). It must come before the
-- transaction writes anything: an id drawn before the lock could fall below a horizon the
-- sealer computed without it.
CREATE FUNCTION begin_append() RETURNS void
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    IF current_setting('modelreg.appending', true) = 'on' THEN
        RETURN;
    END IF;
    IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
        RAISE EXCEPTION 'an append must call begin_append() before its transaction writes anything'
            USING ERRCODE = 'MR428';
    END IF;
    PERFORM pg_advisory_xact_lock_shared(append_lock_key());
    PERFORM set_config('modelreg.appending', 'on', true);
    -- Draw the id now, under the lock, so the sealer finds it beside the lock at once.
    PERFORM pg_current_xact_id();
END $$;

CREATE FUNCTION require_announced_append() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('modelreg.appending', true) IS DISTINCT FROM 'on' THEN
        RAISE EXCEPTION 'events are written only by an append that called begin_append()'
            USING ERRCODE = 'MR428';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER events_require_announced_append BEFORE INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION require_announced_append();

-- append_events draws its transaction id as its first step (a DECLARE initialiser), so
-- the announcement wraps it: the old body runs once the lock is held.
ALTER FUNCTION append_events(text, text, bigint, uuid[], text[], bytea[], text[], text[], bytea, bytea[])
    RENAME TO append_events_announced;

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
BEGIN
    PERFORM begin_append();
    RETURN QUERY SELECT * FROM append_events_announced(
        p_stream_id, p_stream_type, p_expected_version, p_event_ids, p_event_types,
        p_envelopes, p_claim_keys, p_release_keys, p_prev_hash, p_hashes);
END $$;
