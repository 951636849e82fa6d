-- A sealer's round in one statement (eventlog.sealer).
--
-- A round took three round trips: the horizon (a snapshot and one copy of the lock
-- table), the read of the finished events below it, and seal_batch with the chain the
-- sealer had computed between them. A write waits for its seal, so a single writer paid
-- those trips on every registration. This function runs the same steps in the same order
-- in one statement: each query of a VOLATILE function takes a fresh snapshot, so the
-- read's snapshot is still taken after the lock table was copied (migration 0012's rule),
-- and the global chain is extended here with the same link as events.envelope.log_link.

-- The 64-bit id of a 32-bit xid seen in the lock table beside a snapshot whose xmax is
-- p_xmax: the nearest one, below or at/above xmax.
CREATE FUNCTION sealer_full_xid(p_xid bigint, p_xmax bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT CASE WHEN ahead < 2147483648 THEN p_xmax + ahead ELSE p_xmax - (4294967296 - ahead) END
      FROM (SELECT ((p_xid - p_xmax) % 4294967296 + 4294967296) % 4294967296 AS ahead) a
$$;

-- The horizon below which every appender has ended: the least id of a lock holder, the
-- snapshot's xmax when there is none, its xmin for a holder whose id the copy does not
-- show yet (between its lock and its id). PL/pgSQL on arrays, no query: a SQL function
-- with a FROM clause is planned again on every call before Postgres 18 (0.3 ms here).
CREATE FUNCTION sealer_horizon(
    p_xmin bigint, p_xmax bigint, p_holders int[], p_xid_pids int[], p_xids bigint[]
) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE SET search_path FROM CURRENT AS $$
DECLARE
    v_horizon bigint := p_xmax;
    v_least   bigint;
BEGIN
    FOR h IN 1..coalesce(cardinality(p_holders), 0) LOOP
        v_least := NULL;
        FOR i IN 1..coalesce(cardinality(p_xid_pids), 0) LOOP
            IF p_xid_pids[i] = p_holders[h] THEN
                v_least := least(v_least, sealer_full_xid(p_xids[i], p_xmax));
            END IF;
        END LOOP;
        v_horizon := least(v_horizon, coalesce(v_least, p_xmin));
    END LOOP;
    RETURN v_horizon;
END $$;

CREATE FUNCTION seal_round(
    p_prev_position bigint,
    p_prev_tx       xid8,
    p_prev_seq      bigint,
    p_prev_hash     bytea,
    p_limit         integer,
    p_channel       text
) RETURNS TABLE (first_position bigint, seqs bigint[], last_tx xid8, last_seq bigint, last_hash bytea)
LANGUAGE plpgsql VOLATILE SET search_path FROM CURRENT AS $$
DECLARE
    v_key      bigint := append_lock_key();
    v_horizon  bigint;
    v_seqs     bigint[];
    v_txs      xid8[];
    v_streams  text[];
    v_types    text[];
    v_links    bytea[];
    v_hashes   bytea[] := '{}';
    v_hash     bytea := p_prev_hash;
    n          integer;
BEGIN
    -- Statement one: its snapshot, then one consistent copy of the lock table.
    WITH locks AS MATERIALIZED (
        SELECT locktype, database, classid, objid, objsubid, transactionid, pid, mode, granted
          FROM pg_locks
    ), holders AS (
        SELECT DISTINCT pid FROM locks
         WHERE locktype = 'advisory' AND granted AND objsubid = 1
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid = ((v_key >> 32) & 4294967295)::oid
           AND objid = (v_key & 4294967295)::oid
    )
    SELECT sealer_horizon(
               pg_snapshot_xmin(s)::text::bigint,
               pg_snapshot_xmax(s)::text::bigint,
               array(SELECT h.pid FROM holders h),
               array(SELECT l.pid FROM locks l JOIN holders h USING (pid)
                      WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted),
               array(SELECT l.transactionid::text::bigint FROM locks l JOIN holders h USING (pid)
                      WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted))
      INTO v_horizon
      FROM pg_current_snapshot() AS s;

    -- Statement two, with a snapshot taken after that copy: every appender below the
    -- horizon has ended, so it sees all of their rows or, rolled back, none.
    SELECT array_agg(f.seq ORDER BY f.tx_id, f.seq), array_agg(f.tx_id ORDER BY f.tx_id, f.seq),
           array_agg(f.stream_id ORDER BY f.tx_id, f.seq),
           array_agg(f.event_type ORDER BY f.tx_id, f.seq),
           array_agg(f.stream_hash ORDER BY f.tx_id, f.seq)
      INTO v_seqs, v_txs, v_streams, v_types, v_links
      FROM (SELECT seq, tx_id, stream_id, event_type, stream_hash
              FROM events
             WHERE tx_id < v_horizon::text::xid8
               AND (tx_id, seq) > (p_prev_tx, p_prev_seq)
             ORDER BY tx_id, seq
             LIMIT p_limit) f;
    n := coalesce(cardinality(v_seqs), 0);
    IF n = 0 THEN
        RETURN;
    END IF;

    -- events.envelope.log_link: sha256(0x02 || previous || position, 8 bytes big-endian || stream hash)
    FOR i IN 1..n LOOP
        v_hash := sha256('\x02'::bytea || v_hash || int8send(p_prev_position + i) || v_links[i]);
        v_hashes[i] := v_hash;
    END LOOP;

    PERFORM seal_batch(p_prev_position, v_seqs, v_streams, v_types, v_hashes,
                       v_txs[n], v_seqs[n], p_channel);
    RETURN QUERY SELECT p_prev_position + 1, v_seqs, v_txs[n], v_seqs[n], v_hash;
END $$;
