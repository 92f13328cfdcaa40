-- Linking a vehicle to the meter that feeds its charger. The first link of a vehicle covers all of
-- its history (readings are often backfilled after registration); a relink closes the current
-- period where the new one starts, so past windows keep the meter that was linked then.

CREATE OR REPLACE FUNCTION telemetry.link_vehicle(
    p_vehicle_id text, p_meter_id text, p_valid_from timestamptz DEFAULT NULL)
RETURNS TABLE (vehicle_id text, meter_id text, valid_from timestamptz, changed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    current_link telemetry.vehicle_meter_links;
    starts timestamptz;
BEGIN
    -- Serialise links of one vehicle; the exclusion constraint would reject a race anyway.
    PERFORM pg_advisory_xact_lock(hashtextextended('telemetry.link:' || p_vehicle_id, 0));
    SELECT * INTO current_link FROM telemetry.vehicle_meter_links l
    WHERE l.vehicle_id = p_vehicle_id AND upper_inf(l.valid);

    IF FOUND AND current_link.meter_id = p_meter_id THEN
        RETURN QUERY SELECT p_vehicle_id, p_meter_id, lower(current_link.valid), false;
        RETURN;
    END IF;

    IF NOT FOUND THEN
        starts := coalesce(p_valid_from, '-infinity');
    ELSE
        starts := coalesce(p_valid_from, now());
        IF starts <= lower(current_link.valid) THEN
            RAISE EXCEPTION 'vehicle % is linked to meter % since %; a new link must start after that',
                p_vehicle_id, current_link.meter_id, lower(current_link.valid)
                USING ERRCODE = 'data_exception';
        END IF;
        UPDATE telemetry.vehicle_meter_links l SET valid = tstzrange(lower(l.valid), starts)
        WHERE l.vehicle_id = p_vehicle_id AND upper_inf(l.valid);
    END IF;

    INSERT INTO telemetry.vehicle_meter_links (vehicle_id, meter_id, valid)
    VALUES (p_vehicle_id, p_meter_id, tstzrange(starts, NULL));
    RETURN QUERY SELECT p_vehicle_id, p_meter_id, starts, true;
END $$;
