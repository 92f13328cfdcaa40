-- Community edition: continuous aggregates maintain themselves.

CREATE OR REPLACE FUNCTION telemetry.aggregates_maintained_by_ingest() RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT false $$;

CREATE OR REPLACE FUNCTION telemetry.add_meter_energy(hours telemetry.meter_energy_hourly[]) RETURNS bigint
LANGUAGE plpgsql STRICT AS $$
BEGIN
    RAISE EXCEPTION 'continuous aggregates maintain themselves on the Community edition';
END $$;

CREATE OR REPLACE FUNCTION telemetry.add_vehicle_energy(hours telemetry.vehicle_energy_hourly[]) RETURNS bigint
LANGUAGE plpgsql STRICT AS $$
BEGIN
    RAISE EXCEPTION 'continuous aggregates maintain themselves on the Community edition';
END $$;
