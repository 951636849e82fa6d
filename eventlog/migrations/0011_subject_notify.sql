-- Every API process keeps the names (and comment texts) it has shown in memory
-- (service.identity.subjects) while it LISTENs on `modelreg_subjects_<schema>`. Erasure
-- changes a row of `subjects` (the name cleared) and of `erasable_comments` (the text
-- cleared); each changed or deleted row NOTIFYs its subject id or comment reference, at
-- commit, whoever changed it (the API, the CLI, an operator's UPDATE), so every process
-- drops that one entry. New rows need no notice: a process keeps only what it has found.
CREATE FUNCTION notify_subject_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE channel text := left('modelreg_subjects_' || TG_TABLE_SCHEMA, 63);
BEGIN
    -- Two branches, not one CASE: a record has only its own table's fields.
    IF TG_TABLE_NAME = 'subjects' THEN
        PERFORM pg_notify(channel, OLD.subject_id);
    ELSE
        PERFORM pg_notify(channel, OLD.ref);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER subjects_notify AFTER UPDATE OR DELETE ON subjects FOR EACH ROW
    EXECUTE FUNCTION notify_subject_change();
CREATE TRIGGER erasable_comments_notify AFTER UPDATE OR DELETE ON erasable_comments
    FOR EACH ROW EXECUTE FUNCTION notify_subject_change();
