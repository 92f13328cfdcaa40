-- Every API process caches key lookups (api/db/keys.py KeyCache) and listens on this channel: a
-- change to a key, committed by the API, the CLI or plain SQL, names the key id, and each process
-- forgets that key before its next request. An empty payload (TRUNCATE) means: forget every key.
-- NOTIFY is sent at commit, so a listener never hears of a change it cannot yet see.

CREATE OR REPLACE FUNCTION telemetry.notify_api_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('telemetry_api_keys', '');
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM pg_notify('telemetry_api_keys', OLD.key_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND (TG_OP = 'INSERT' OR NEW.key_id IS DISTINCT FROM OLD.key_id) THEN
        PERFORM pg_notify('telemetry_api_keys', NEW.key_id);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER api_key_change_notifies
    AFTER INSERT OR UPDATE OR DELETE ON telemetry.api_keys
    FOR EACH ROW EXECUTE FUNCTION telemetry.notify_api_key_change();

CREATE OR REPLACE TRIGGER api_keys_truncate_notifies
    AFTER TRUNCATE ON telemetry.api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION telemetry.notify_api_key_change();
