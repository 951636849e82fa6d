-- A guarded append in one statement (eventlog.store, "How a guard holds").
--
-- A guarded append took five round trips: BEGIN, the shared lock on each guard stream,
-- a read of its version, the append, COMMIT. Every governed write (a registration, a
-- transition, an approval, an alias move) is guarded by the registry policy's version,
-- so each paid about half a millisecond more than an unguarded append for the trips.
-- This function does the same steps in the same order inside one statement.
--
-- Each query of a VOLATILE function takes a fresh snapshot, so the version read after a
-- guard's lock is granted sees the change of a writer the lock waited for, as the read in
-- a statement of its own did. No step before append_events writes, so the transaction's
-- id is still drawn only after every lock is held (begin_append, migration 0012).
CREATE FUNCTION append_events_guarded(
    p_stream_id        text,
    p_stream_type      text,
    p_expected_version bigint,
    p_event_ids        uuid[],
    p_event_types      text[],
    p_envelopes        bytea[],
    p_claim_keys       text[],
    p_release_keys     text[],
    p_prev_hash        bytea,
    p_hashes           bytea[],
    p_exclusive        boolean,
    p_guard_streams    text[],
    p_guard_versions   bigint[]
) RETURNS TABLE (stream_version bigint, last_seq bigint, tx_id xid8, replayed boolean, last_hash bytea)
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
    i integer;
    actual bigint;
BEGIN
    IF p_exclusive THEN
        PERFORM pg_advisory_xact_lock(
            hashtext('modelreg-guard:' || current_schema()), hashtext(p_stream_id));
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_guard_streams, 1), 0) LOOP
        PERFORM pg_advisory_xact_lock_shared(
            hashtext('modelreg-guard:' || current_schema()), hashtext(p_guard_streams[i]));
        SELECT coalesce((SELECT s.version FROM streams s WHERE s.stream_id = p_guard_streams[i]), 0)
            INTO actual;
        IF actual <> p_guard_versions[i] THEN
            RAISE EXCEPTION 'guard stream % moved from version % to %',
                p_guard_streams[i], p_guard_versions[i], actual
                USING ERRCODE = 'MR412',
                      DETAIL = format('%s/%s/%s', p_guard_versions[i], actual, p_guard_streams[i]);
        END IF;
    END LOOP;
    RETURN QUERY SELECT * FROM append_events(
        p_stream_id, p_stream_type, p_expected_version, p_event_ids, p_event_types,
        p_envelopes, p_claim_keys, p_release_keys, p_prev_hash, p_hashes);
END $$;
