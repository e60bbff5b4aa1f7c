-- Fresh reads across nodes: every change of a live session is pushed to the nodes that LISTEN
-- on channel stored_http_session, so a node stops serving a cached copy that another node
-- changed or ended. Payload: '<session_id> <version>' for a written row, '<session_id>' for a
-- deleted one. Expiry pushes (version unchanged) and the purge of expired rows notify nothing.
CREATE OR REPLACE FUNCTION stored_http_session_notify() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.expires_at > (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT THEN
            PERFORM pg_notify('stored_http_session', OLD.session_id);
        END IF;
    ELSE
        PERFORM pg_notify('stored_http_session', NEW.session_id || ' ' || NEW.version);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS stored_http_session_written ON stored_http_session;
CREATE TRIGGER stored_http_session_written
    AFTER UPDATE ON stored_http_session
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION stored_http_session_notify();

DROP TRIGGER IF EXISTS stored_http_session_deleted ON stored_http_session;
CREATE TRIGGER stored_http_session_deleted
    AFTER DELETE ON stored_http_session
    FOR EACH ROW
    EXECUTE FUNCTION stored_http_session_notify();
