-- How long data is kept, in one row: the single source of truth for the retention policies
-- (Community), the maintenance task (Apache), the refresh windows and the oldest reading the API
-- accepts. Change it with telemetry.set_retention() (`python -m api retention set`), never by
-- editing a policy: every migration re-applies this row to the policies.

CREATE TABLE telemetry.retention (
    singleton          boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    raw_readings       interval    NOT NULL,
    hourly_aggregates  interval    NOT NULL,
    late_margin        interval    NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    -- A reading is accepted until late_margin before its raw chunk may be dropped, so that the
    -- aggregate refresh sees it first.
    CHECK (late_margin >= INTERVAL '5 minutes' AND raw_readings > late_margin),
    -- The six-hour and daily refreshes read hourly rows up to raw_readings + 5 days back.
    CHECK (hourly_aggregates >= raw_readings + INTERVAL '5 days')
);

INSERT INTO telemetry.retention (raw_readings, hourly_aggregates, late_margin)
VALUES (INTERVAL '30 days', INTERVAL '2 years', INTERVAL '1 hour');
