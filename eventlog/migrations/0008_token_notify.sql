-- Every API process keeps the tokens it has checked in memory (service.commands.tokens) and
-- forgets them all when any token changes. The news comes from here: each event appended to
-- a token stream (issued, revoked) NOTIFYs `modelreg_tokens_<schema>` with the stream id,
-- delivered when the appending transaction commits, whoever wrote it (the API, the CLI,
-- a script). A process whose LISTEN is down does not use its cache at all.
CREATE FUNCTION notify_token_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(left('modelreg_tokens_' || TG_TABLE_SCHEMA, 63), NEW.stream_id);
    RETURN NULL;
END $$;

CREATE TRIGGER events_token_notify AFTER INSERT ON events FOR EACH ROW
    WHEN (NEW.stream_id LIKE 'token:%') EXECUTE FUNCTION notify_token_change();
