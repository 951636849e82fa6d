-- Trigram indexes make substring search on names use an index. pg_trgm is a trusted
-- extension (no superuser needed); it lives in public so every registry schema in the
-- database shares the one installation and dropping a schema never drops it.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
EXCEPTION WHEN unique_violation OR duplicate_object THEN
    NULL;  -- another schema's migration installed it a moment ago
END $$;
