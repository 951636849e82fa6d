-- Pseudonymous subjects (issue 18): who acted is recorded in events as an opaque subject id
-- (`subj_` + 26 base32 characters), never as a name, so that a person's name can be erased
-- without touching the hashed event bytes. This table is the only place that links the id
-- to the principal's name. Erasure clears `principal` and keeps the row as the record that
-- the subject existed and was erased (when, by whom, why); the ids in the log then resolve
-- to "erased subject". Events recorded before this migration keep the names they hold.
CREATE TABLE subjects (
    subject_id  text        PRIMARY KEY CHECK (subject_id ~ '^subj_[a-z2-7]{26}$'),
    principal   text        UNIQUE,           -- NULL once erased
    created_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    erased_at   timestamptz,
    erased_by   text,                         -- the erasing admin's subject id
    reason      text,
    CHECK ((principal IS NULL) = (erased_at IS NOT NULL))
);

-- Comments kept beside the log (MODELREG_ERASABLE_COMMENTS): the event holds `ref`, which
-- is `cmt_` + sha256(salt || text), so it commits to the text without revealing it (the
-- salt defeats guessing short comments). Erasing the author clears salt and text.
CREATE TABLE erasable_comments (
    ref         text        PRIMARY KEY CHECK (ref ~ '^cmt_[0-9a-f]{64}$'),
    subject_id  text        NOT NULL,
    salt        bytea,                        -- NULL once erased
    body        text,                         -- NULL once erased
    created_at  timestamptz NOT NULL DEFAULT statement_timestamp(),
    erased_at   timestamptz,
    CHECK ((body IS NULL) = (erased_at IS NOT NULL))
);
CREATE INDEX erasable_comments_by_subject ON erasable_comments (subject_id);

DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON subjects, erasable_comments TO %I', current_setting('modelreg.app_role'));
END $$;
