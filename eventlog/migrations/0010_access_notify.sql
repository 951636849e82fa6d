-- Custom roles, grants and service accounts (the `access:registry` stream) change what a
-- token may do, so each append to it NOTIFYs the same channel as a token change (0008):
-- every API process forgets the tokens and the access state it kept, and the next request
-- sees a grant withdrawn or a service account disabled at once.
CREATE TRIGGER events_access_notify AFTER INSERT ON events FOR EACH ROW
    WHEN (NEW.stream_id LIKE 'access:%') EXECUTE FUNCTION notify_token_change();
