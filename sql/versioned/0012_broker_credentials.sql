-- MQTT devices authenticate to the broker (NATS) with an API key as their password. The broker
-- checks passwords itself, against bcrypt hashes in its users file, which `python -m api
-- broker-users` writes from this column: the bcrypt hash of the whole key, stored when a key with
-- the ingest scope is created (the key itself is never stored). Keys created before this migration
-- have none: create a new ingest key for MQTT devices.
ALTER TABLE telemetry.api_keys ADD COLUMN IF NOT EXISTS broker_hash text
    CHECK (broker_hash IS NULL OR broker_hash ~ '^\$2[abxy]\$[0-9]{2}\$');
COMMENT ON COLUMN telemetry.api_keys.broker_hash IS
    'bcrypt hash of the whole key, for the MQTT broker''s users file (NULL: no MQTT)';
