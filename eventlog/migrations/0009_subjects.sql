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

DO $$
BEGIN
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON subjects TO %I', current_setting('modelreg.app_role'));
END $$;
