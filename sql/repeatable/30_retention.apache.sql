-- Apache edition: no policies; telemetry.run_maintenance() reads telemetry.retention itself.

CREATE OR REPLACE FUNCTION telemetry.apply_retention_policies() RETURNS void
LANGUAGE sql AS $$ SELECT $$;
