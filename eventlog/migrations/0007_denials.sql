-- Refused requests (issue 18): who asked for what, and why they were refused. Not events: a
-- flood of refusals must not grow the append-only log. Identical refusals within one minute
-- are one row with a count, a process keeps at most a bounded number of distinct ones between
-- two writes (the rest are counted in one overflow row), and rows older than the retention
-- (MODELREG_DENIALS_RETENTION_DAYS) are deleted.
CREATE TABLE denials (
    id          bigserial   NOT NULL UNIQUE,
    minute      timestamptz NOT NULL,
    principal   text        NOT NULL,  -- '' when the caller was not authenticated
    token_id    text        NOT NULL,  -- '' when the caller was not authenticated
    status      int         NOT NULL CHECK (status IN (401, 403, 409)),
    code        text        NOT NULL,  -- unauthenticated, permission_denied, policy_violation
    method      text        NOT NULL,
    route       text        NOT NULL,  -- the route's template, never the raw path
    model       text        NOT NULL,  -- the model named in the path ('' when none)
    permission  text        NOT NULL,  -- the permission that was missing ('' when none)
    reason      text        NOT NULL,
    client      text        NOT NULL,  -- the peer address as the server saw it
    count       bigint      NOT NULL CHECK (count > 0),
    first_at    timestamptz NOT NULL,
    last_at     timestamptz NOT NULL,
    PRIMARY KEY (minute, principal, token_id, status, code, method, route, model, permission,
                 reason, client)
);
CREATE INDEX denials_newest ON denials (last_at DESC, id DESC);
CREATE INDEX denials_by_principal ON denials (principal, last_at DESC, id DESC);

DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON denials TO %I', current_setting('modelreg.app_role'));
    EXECUTE format('GRANT USAGE ON SEQUENCE denials_id_seq TO %I', current_setting('modelreg.app_role'));
END $$;
