-- Token secrets, kept out of the events (issue 13, item 5). Events are read by auditors and
-- published on NATS, so since 0.3 a token.issued event carries the token's id and facts
-- only. What lets a presented secret find its token is this table: the HMAC-SHA256 of the
-- secret under a server pepper that lives outside the database (a 0600 file in the data
-- dir, or MODELREG_TOKEN_PEPPER). A dump of the database alone cannot check a guess.
--
-- Tokens issued before 0.3 have no row here: their token.issued event still holds an
-- unkeyed SHA-256 (recorded bytes are immutable) and they are verified through the
-- `token-sha256:` unique key they claimed, until an operator rotates them.
CREATE TABLE token_credentials (
    token_id   text        PRIMARY KEY,
    digest     bytea       NOT NULL UNIQUE CHECK (length(digest) = 32),
    created_at timestamptz NOT NULL DEFAULT statement_timestamp()
);

-- The fingerprint (HMAC of a fixed label) of the pepper the digests were made with: a
-- process started with another pepper refuses to start, instead of refusing every token.
CREATE TABLE token_pepper (
    id          int   PRIMARY KEY CHECK (id = 1),
    fingerprint bytea NOT NULL CHECK (length(fingerprint) = 32)
);

DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT ON token_credentials, token_pepper TO %I', current_setting('modelreg.app_role'));
END $$;
