-- Linking vehicles to the meters that feed their chargers. The first link of a vehicle covers all of
-- its history (readings are often backfilled after registration); a relink closes the current
-- period where the new one starts, so past windows keep the meter that was linked then. A meter
-- feeds one vehicle at a time (0010): a link that would overlap another vehicle's link of the same
-- meter is refused, naming that vehicle and its period.
--
-- Errors, as the API maps them: exclusion_violation (a meter conflict) and data_exception (a link
-- starting too early) are conflicts with the stored links (409); invalid_parameter_value is a bad
-- request (422).
--
-- Concurrency: every writer takes one SHARE ROW EXCLUSIVE lock on the links table for its
-- transaction. Writers queue behind each other (links are rare writes), so the checks below see a
-- table nobody else changes meanwhile; readers (ACCESS SHARE) are never blocked, and autovacuum of
-- this small table yields to a waiting writer. One lock for a whole request, however many links it
-- holds: the shared lock table has room for max_locks_per_transaction (64 by default) per
-- connection, and a lock per vehicle for a bulk request of 50,000 links ran out of it ("out of
-- shared memory"). The API's role may take the lock: it holds UPDATE on the table.

-- An instant in messages: RFC 3339 in UTC, as the API writes it.
CREATE OR REPLACE FUNCTION telemetry.link_time(ts timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ts = '-infinity' THEN 'the beginning of its history'
                ELSE rtrim(rtrim(to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '0'), '.') || 'Z'
           END
$$;

-- Links many vehicles at once, atomically: any error leaves every link as it was. Each vehicle may
-- appear once. Per vehicle, the rules of a single link: the same meter again changes nothing; a
-- first link starts at p_valid_from or covers all history; a relink starts at p_valid_from (after
-- the current link's start) or now; after an ended link, the next starts at p_valid_from (not
-- before that end) or now. All the changed vehicles' current links are closed before any new link
-- is stored, so vehicles can swap meters in one request. Set-based throughout: 50,000 links are a
-- handful of hash joins, not 50,000 lookups.
CREATE OR REPLACE FUNCTION telemetry.link_vehicles(
    p_vehicle_ids text[], p_meter_ids text[], p_valid_from timestamptz[])
RETURNS TABLE (vehicle_id text, meter_id text, valid_from timestamptz, changed boolean)
-- Every access is by vehicle or meter id, through an index: a plan cached while the table was small
-- must not scan it whole on every later call (a statement calling link_vehicle per row, say). And
-- the row estimates of unnest() are rough: JIT-compiling the checks cost more than running them.
LANGUAGE plpgsql SET enable_seqscan = off SET jit = off AS $$
DECLARE
    problem text;
    -- The plan, one element per requested link, in request order.
    vehicles text[];
    meters text[];
    starts timestamptz[];
    changes boolean[];
BEGIN
    IF cardinality(p_meter_ids) IS DISTINCT FROM cardinality(p_vehicle_ids)
       OR cardinality(p_valid_from) IS DISTINCT FROM cardinality(p_vehicle_ids) THEN
        RAISE EXCEPTION 'one meter and one start (or null) per vehicle' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT format('vehicle %s appears %s times in one request (items %s); link each vehicle once',
                  t.v, count(*), string_agg((t.n - 1)::text, ', ' ORDER BY t.n))
    INTO problem
    FROM unnest(p_vehicle_ids) WITH ORDINALITY AS t(v, n)
    GROUP BY t.v HAVING count(*) > 1
    ORDER BY min(t.n) LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;

    LOCK TABLE telemetry.vehicle_meter_links IN SHARE ROW EXCLUSIVE MODE;

    -- Each vehicle's latest link decides what the request does to it.
    WITH request AS (
        SELECT t.v, t.m, t.f, t.n
        FROM unnest(p_vehicle_ids, p_meter_ids, p_valid_from) WITH ORDINALITY AS t(v, m, f, n)
    ), latest AS (
        SELECT DISTINCT ON (l.vehicle_id) l.vehicle_id::text AS v, l.meter_id::text AS m, l.valid
        FROM telemetry.vehicle_meter_links l
        WHERE l.vehicle_id::text IN (SELECT r.v FROM request r)
        ORDER BY l.vehicle_id, lower(l.valid) DESC
    ), planned AS (
        SELECT r.v, r.m, r.n, l.m AS latest_meter, l.valid AS latest,
               l.v IS NOT NULL AND upper_inf(l.valid) AND l.m = r.m AS unchanged,
               CASE WHEN l.v IS NULL THEN coalesce(r.f, '-infinity')
                    WHEN upper_inf(l.valid) AND l.m = r.m THEN lower(l.valid)
                    ELSE coalesce(r.f, now()) END AS starts
        FROM request r LEFT JOIN latest l ON l.v = r.v
    ), checked AS (
        SELECT p.*, CASE
            WHEN p.unchanged OR p.latest IS NULL THEN NULL
            WHEN upper_inf(p.latest) AND p.starts <= lower(p.latest) THEN
                format('vehicle %s is linked to meter %s since %s; a new link must start after that',
                       p.v, p.latest_meter, telemetry.link_time(lower(p.latest)))
            WHEN p.starts < upper(p.latest) THEN
                format('vehicle %s was linked to meter %s until %s; a new link must start at that time or later',
                       p.v, p.latest_meter, telemetry.link_time(upper(p.latest)))
            END AS problem
        FROM planned p
    )
    SELECT array_agg(c.v ORDER BY c.n), array_agg(c.m ORDER BY c.n), array_agg(c.starts ORDER BY c.n),
           array_agg(NOT c.unchanged ORDER BY c.n),
           (array_agg(c.problem ORDER BY c.n) FILTER (WHERE c.problem IS NOT NULL))[1]
    INTO vehicles, meters, starts, changes, problem
    FROM checked c;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'data_exception';
    END IF;

    -- Two vehicles taking one meter in this request: both new links are open-ended, so they overlap.
    SELECT format('meter %s is claimed by vehicles %s and %s in one request; a meter feeds one vehicle at a time',
                  a.m, a.v, b.v)
    INTO problem
    FROM unnest(vehicles, meters, changes) WITH ORDINALITY AS a(v, m, changed, n)
    JOIN unnest(vehicles, meters, changes) WITH ORDINALITY AS b(v, m, changed, n) ON b.m = a.m AND b.n > a.n
    WHERE a.changed AND b.changed
    ORDER BY a.n, b.n LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'exclusion_violation';
    END IF;

    -- Each new link [start, infinity) against the other vehicles' links of its meter, as they will
    -- be once this request has closed the current links of the vehicles it moves.
    WITH plan AS (
        SELECT p.v, p.m, p.starts, p.changed, p.n
        FROM unnest(vehicles, meters, starts, changes) WITH ORDINALITY AS p(v, m, starts, changed, n)
    ), others AS (
        SELECT l.vehicle_id::text AS v, l.meter_id::text AS m, lower(l.valid) AS begins,
               CASE WHEN moved.v IS NOT NULL THEN moved.starts ELSE upper(l.valid) END AS ends
        FROM telemetry.vehicle_meter_links l
        LEFT JOIN plan moved ON moved.v = l.vehicle_id::text AND moved.changed AND upper_inf(l.valid)
        WHERE l.meter_id::text IN (SELECT p.m FROM plan p WHERE p.changed)
    )
    SELECT CASE WHEN o.ends IS NULL THEN
               format('meter %s feeds vehicle %s since %s; a meter feeds one vehicle at a time: end that link '
                      'before linking vehicle %s to it', a.m, o.v, telemetry.link_time(o.begins), a.v)
           ELSE
               format('meter %s fed vehicle %s from %s until %s; a meter feeds one vehicle at a time: a link of '
                      'vehicle %s to it must start at that end or later', a.m, o.v, telemetry.link_time(o.begins),
                      telemetry.link_time(o.ends), a.v)
           END
    INTO problem
    FROM plan a JOIN others o ON o.m = a.m AND o.v <> a.v
    WHERE a.changed AND (o.ends IS NULL OR o.ends > a.starts)
    ORDER BY a.n, o.begins DESC LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'exclusion_violation';
    END IF;

    UPDATE telemetry.vehicle_meter_links l SET valid = tstzrange(lower(l.valid), p.starts)
    FROM unnest(vehicles, starts, changes) AS p(v, starts, changed)
    WHERE p.changed AND l.vehicle_id = p.v AND upper_inf(l.valid);

    INSERT INTO telemetry.vehicle_meter_links (vehicle_id, meter_id, valid)
    SELECT p.v, p.m, tstzrange(p.starts, NULL)
    FROM unnest(vehicles, meters, starts, changes) AS p(v, m, starts, changed)
    WHERE p.changed;

    RETURN QUERY SELECT p.v, p.m, p.starts, p.changed
                 FROM unnest(vehicles, meters, starts, changes) WITH ORDINALITY AS p(v, m, starts, changed, n)
                 ORDER BY p.n;
END $$;

-- One vehicle: the same rules and answer as telemetry.link_vehicles.
CREATE OR REPLACE FUNCTION telemetry.link_vehicle(
    p_vehicle_id text, p_meter_id text, p_valid_from timestamptz DEFAULT NULL)
RETURNS TABLE (vehicle_id text, meter_id text, valid_from timestamptz, changed boolean)
LANGUAGE sql AS $$
    SELECT * FROM telemetry.link_vehicles(ARRAY[p_vehicle_id], ARRAY[p_meter_id], ARRAY[p_valid_from])
$$;

-- Ends a vehicle's current link at p_at (default now), so its meter can feed another vehicle from
-- then on. The period is kept (analytics of past windows still use it). No row: the vehicle has no
-- open link.
CREATE OR REPLACE FUNCTION telemetry.unlink_vehicle(p_vehicle_id text, p_at timestamptz DEFAULT NULL)
RETURNS TABLE (vehicle_id text, meter_id text, valid_from timestamptz, valid_to timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    current_link telemetry.vehicle_meter_links;
    ends timestamptz := coalesce(p_at, now());
BEGIN
    LOCK TABLE telemetry.vehicle_meter_links IN SHARE ROW EXCLUSIVE MODE;
    SELECT * INTO current_link FROM telemetry.vehicle_meter_links l
    WHERE l.vehicle_id = p_vehicle_id AND upper_inf(l.valid);
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF ends <= lower(current_link.valid) THEN
        RAISE EXCEPTION 'vehicle % is linked to meter % since %; the link can only end after that',
            p_vehicle_id, current_link.meter_id, telemetry.link_time(lower(current_link.valid))
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    UPDATE telemetry.vehicle_meter_links l SET valid = tstzrange(lower(l.valid), ends)
    WHERE l.vehicle_id = p_vehicle_id AND upper_inf(l.valid);
    RETURN QUERY SELECT p_vehicle_id, current_link.meter_id::text, lower(current_link.valid), ends;
END $$;
