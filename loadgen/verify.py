"""After a run: every reading the server accepted is stored exactly once, the analytics equal the
generated energy, and the faulty chargers the analytics flag are the ones the generator planted."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime, timedelta

import httpx
import psycopg

from loadgen.fleet import Fleet, meter_id, vehicle_id


def _same_energy(got: float, want: float) -> bool:
    """Energy sums match to 1e-9 relative (the spec's promise), or 1e-9 kWh near zero."""
    return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)


def _answers_right(got: dict, want_ac: float, want_dc: float) -> bool:
    """A performance answer's AC and DC equal the generated energy."""
    return _same_energy(got["acConsumedKwh"], want_ac) and _same_energy(got["dcDeliveredKwh"], want_dc)


# The platform's refresh job of the continuous aggregates (Community edition; none on Apache).
_REFRESH_JOBS = """SELECT job_id FROM timescaledb_information.jobs
                   WHERE proc_schema = 'telemetry' AND proc_name = 'refresh_energy_aggregates' ORDER BY job_id"""


def _refresh_aggregates(database_url: str) -> bool:
    """Runs the platform's aggregate refresh now, as its scheduler does every minute. A reading
    committed after its hour was materialized counts in the analytics only after the next refresh
    (the platform's freshness bound): readings that waited in the log, or a run whose simulated
    hours closed while it was sending, would otherwise fail the analytics checks for up to a minute.
    False when the role may not run the job: the analytics problems then say so."""
    deadline = time.monotonic() + 120
    while True:
        try:
            with psycopg.connect(database_url, autocommit=True) as conn:
                for (job,) in conn.execute(_REFRESH_JOBS).fetchall():
                    conn.execute("CALL run_job(%s)", (job,))
            return True
        except psycopg.errors.InsufficientPrivilege:
            return False
        except psycopg.Error:
            # Another run of the job (another generator's verification, the scheduler) holds it: wait
            # for it to finish, then run it again so that this run's readings are in.
            if time.monotonic() > deadline:
                return False
            time.sleep(1)


# Per device and bucket of an aggregate level, before the buckets the reads take as materialized (the
# ten-minute rows up to telemetry.ten_minute_mark, the hourly ones up to their watermark): the raw
# readings against the level's rows. Any difference is a reading the answers that read that level
# miss (or count twice) until a refresh mends the bucket.
_GAPS = """
WITH mark AS (SELECT {mark} AS at),
raw AS (SELECT {column} AS device, time_bucket(%(width)s::interval, time) AS bucket, count(*) AS n
        FROM telemetry.{stream}_readings, mark WHERE {column} = ANY(%(devices)s) AND time < mark.at GROUP BY 1, 2),
rows_ AS (SELECT {column} AS device, bucket, readings AS n
          FROM telemetry.{stream}_energy_{level}_materialized, mark WHERE {column} = ANY(%(devices)s) AND bucket < mark.at)
SELECT device, bucket, coalesce(raw.n, 0), coalesce(rows_.n, 0)
FROM raw FULL JOIN rows_ USING (device, bucket) WHERE raw.n IS DISTINCT FROM rows_.n ORDER BY bucket, device"""
_LEVELS = {"10m": ("10 minutes", "telemetry.ten_minute_mark(%(stream)s, %(aggregate)s::regclass)"),
           "hourly": ("1 hour", "telemetry.aggregate_watermark(%(aggregate)s::regclass)")}

# What the refresh job has still to process for a stream (Community): invalidations TimescaleDB has
# logged on the raw readings' hypertable or moved on to the stream's aggregates, and the hours the
# ingest marked for the running sums to rebuild.
_PENDING = """
SELECT (SELECT count(*) FROM _timescaledb_catalog.continuous_aggs_hypertable_invalidation_log l
        JOIN _timescaledb_catalog.hypertable h ON h.id = l.hypertable_id
        WHERE h.schema_name = 'telemetry' AND h.table_name = %(stream)s || '_readings')
     + (SELECT count(*) FROM _timescaledb_catalog.continuous_aggs_materialization_invalidation_log l
        JOIN _timescaledb_catalog.continuous_agg a ON a.mat_hypertable_id = l.materialization_id
        WHERE a.user_view_schema = 'telemetry' AND a.user_view_name LIKE %(stream)s || '\\_energy\\_%%'
          AND l.greatest_modified_value < 9223372036854775807 AND l.lowest_modified_value > -210866803200000000),
       (SELECT count(*) FROM telemetry.energy_running_dirty WHERE stream = %(stream)s)"""


def aggregate_gaps(conn: psycopg.Connection, stream: str, devices: list[str],
                   level: str = "10m") -> list[tuple[str, datetime, int, int]]:
    """(device, bucket, raw readings, readings in the level's row) wherever the two differ, before the
    buckets the reads take as materialized; level is "10m" or "hourly"."""
    if stream not in ("meter", "vehicle") or level not in _LEVELS:
        raise ValueError(f"no {level} aggregate for stream {stream!r}")
    width, mark = _LEVELS[level]
    query = _GAPS.format(mark=mark, stream=stream, level=level, column=f"{stream}_id")
    return conn.execute(query, {"stream": stream, "aggregate": f"telemetry.{stream}_energy_{level}", "width": width,
                                "devices": devices}).fetchall()


def _diagnose(database_url: str, api: httpx.Client, window: dict, wrong: dict[str, tuple[float, float]]) -> str:
    """What lies behind per-vehicle analytics that differ from the generated energy: the ten-minute
    and hourly rows that differ from the raw readings, what the refresh job has still to process, and
    whether one more run of it mends the answers (readings counted late) or not (readings the
    aggregates lost)."""
    vehicles = sorted(wrong)
    meters = [meter_id(int(v.split("-")[1])) for v in vehicles]
    with psycopg.connect(database_url) as conn:
        gaps = {level: aggregate_gaps(conn, "vehicle", vehicles, level) + aggregate_gaps(conn, "meter", meters, level)
                for level in _LEVELS}
        community = conn.execute("SELECT current_setting('timescaledb.license', true) = 'timescale'").fetchone()[0]
        pending = [conn.execute(_PENDING, {"stream": s}).fetchone() for s in ("meter", "vehicle")] if community else []
    found = f"diagnosis of the {len(vehicles)} vehicles whose analytics differ: " + "; ".join(
        f"{len(rows)} {level} rows differ from the raw readings ("
        + (", ".join(f"{d} {b.astimezone(UTC):%Y-%m-%d %H:%MZ}: {raw} raw, {n} in the row"
                     for d, b, raw, n in rows[:4]) or "none") + ")"
        for level, rows in gaps.items())
    if not community:
        return found + "; the Apache edition's aggregate tables are written by the ingest: there is no refresh to run"
    found += (f"; {sum(p[0] for p in pending)} invalidations and {sum(p[1] for p in pending)} hours of the "
              "running sums pending")
    if not _refresh_aggregates(database_url):
        return found + "; one more refresh could not run"
    mended = 0
    for vehicle in vehicles:
        answer = api.get(f"/v1/analytics/performance/{vehicle}", params=window)
        want_ac, want_dc = wrong[vehicle]
        if answer.status_code == 200:
            mended += _answers_right(answer.json(), want_ac, want_dc)
    return (found + f"; after one more refresh {mended} of {len(vehicles)} answer right "
            + ("(counted late, not lost)" if mended == len(vehicles) else "(the aggregates miss readings)"))


def verify(*, database_url: str, api: httpx.Client, start: datetime, end: datetime, devices: range,
           generated: dict[str, tuple[int, float]], inserted: int | None, failed: int, ambiguous: int,
           charged_faulty: set[str]) -> list[str]:
    """Returns the problems found; empty means verified. `generated` maps each device to the count and
    kWh sum of the unique readings generated for it; `devices` the fleet's numbers. `ambiguous` readings were in batches accepted
    after an attempt whose answer was lost: the server may rightly count them as duplicates. `inserted`
    is None after an asynchronous run (the writers, not the answers, counted what was new): then only
    the stored rows are compared with the generated ones."""
    problems: list[str] = []
    if failed:
        problems.append(f"{failed} readings were never accepted by the server")
    expected_rows = sum(n for n, _ in generated.values())
    if inserted is not None and not expected_rows - ambiguous <= inserted <= expected_rows:
        problems.append(f"the server reported {inserted} new readings for {expected_rows} unique ones sent"
                        + (f" ({ambiguous} in batches retried after a lost answer)" if ambiguous else ""))
    ids_m = [meter_id(i) for i in devices]
    ids_v = [vehicle_id(i) for i in devices]
    stored: dict[str, tuple[int, float]] = {}
    with psycopg.connect(database_url) as conn:
        for table, column, kwh, ids in (("meter_readings", "meter_id", "kwh_consumed_ac", ids_m),
                                        ("vehicle_readings", "vehicle_id", "kwh_delivered_dc", ids_v)):
            rows = conn.execute(
                f"SELECT {column}, count(*), coalesce(sum({kwh}), 0) FROM telemetry.{table} "
                f"WHERE {column} = ANY(%s) AND time >= %s AND time < %s GROUP BY 1", (ids, start, end)).fetchall()
            stored.update({device: (n, total) for device, n, total in rows})
    for device, (n, total) in generated.items():
        got_n, got_total = stored.get(device, (0, 0.0))
        if got_n != n:
            problems.append(f"{device}: {got_n} readings stored, {n} accepted")
        elif not _same_energy(got_total, total):
            problems.append(f"{device}: {got_total!r} kWh stored, {total!r} kWh sent")
        if len(problems) > 20:
            problems.append("... (more)")
            return problems

    refreshed = _refresh_aggregates(database_url)
    window = {"from": start.isoformat(), "to": end.isoformat()}
    # Per vehicle: every planted faulty charger and a sample of the others.
    ours = [vehicle_id(i) for i in devices]
    sample = sorted(charged_faulty) + ours[:: max(1, len(devices) // 50)]
    wrong: dict[str, tuple[float, float]] = {}
    for vehicle in dict.fromkeys(sample):
        answer = api.get(f"/v1/analytics/performance/{vehicle}", params=window)
        if answer.status_code != 200:
            problems.append(f"GET /v1/analytics/performance/{vehicle} answered {answer.status_code}")
            continue
        got = answer.json()
        index = int(vehicle.split("-")[1])
        want_ac, want_dc = generated.get(meter_id(index), (0, 0.0))[1], generated.get(vehicle, (0, 0.0))[1]
        if not _answers_right(got, want_ac, want_dc):
            wrong[vehicle] = (want_ac, want_dc)
            problems.append(f"{vehicle}: analytics AC/DC {got['acConsumedKwh']}/{got['dcDeliveredKwh']} kWh, "
                            f"generated {want_ac}/{want_dc}"
                            + ("" if refreshed else " (aggregates not refreshed: this role may not run the job)"))
        if (got["verdict"] == "faulty") != (vehicle in charged_faulty):
            problems.append(f"{vehicle}: verdict {got['verdict']} (planted faulty: {vehicle in charged_faulty})")

    problems += _check_fleet(api, window, devices, ours, generated, charged_faulty)
    if wrong and refreshed:  # last (its refresh would mend what the fleet checks must see), reported first
        try:
            problems.insert(0, _diagnose(database_url, api, window, wrong))
        except (psycopg.Error, httpx.HTTPError) as exc:
            problems.insert(0, f"the diagnosis of the vehicles whose analytics differ failed: {exc}")
    return problems


def _check_fleet(api: httpx.Client, window: dict, devices: range, ours: list[str],
                 generated: dict[str, tuple[int, float]], charged_faulty: set[str]) -> list[str]:
    """The fleet's faulty verdicts are the planted faulty chargers that charged, and (when the database
    holds only this fleet) its totals equal the generated energy."""
    problems: list[str] = []
    fleet = api.get("/v1/analytics/fleet", params={**window, "worst": 1000})
    if fleet.status_code != 200:
        return [f"GET /v1/analytics/fleet answered {fleet.status_code}: {fleet.text[:200]}"]
    body = fleet.json()
    flagged = {v["vehicleId"] for v in body["worst"] if v["verdict"] == "faulty" and v["vehicleId"] in set(ours)}
    if flagged != charged_faulty:
        problems.append(f"flagged faulty but not planted: {sorted(flagged - charged_faulty)[:10]}; "
                        f"planted (and charged) but not flagged: {sorted(charged_faulty - flagged)[:10]}")
    if body["vehicles"] == len(devices):  # the database holds only this fleet: its totals must match too
        ac = sum(generated.get(meter_id(i), (0, 0.0))[1] for i in devices)
        dc = sum(generated.get(vehicle_id(i), (0, 0.0))[1] for i in devices)
        if not (_same_energy(body["acConsumedKwh"], ac) and _same_energy(body["dcDeliveredKwh"], dc)):
            problems.append(f"fleet analytics AC/DC {body['acConsumedKwh']}/{body['dcDeliveredKwh']} kWh, "
                            f"generated {ac}/{dc}")
    return problems


def verify_alerts(api: httpx.Client, *, fleet: Fleet, devices: range, end: datetime,
                  recent_ac: dict[str, list[tuple[datetime, float]]], window: timedelta, silence: timedelta,
                  min_ac_kwh: float) -> dict:
    """Has the server evaluate its alert rules now (`POST /v1/alerts/evaluate`, admin scope), then
    checks that the open faulty_charger alerts are exactly the planted faulty chargers that charged
    at least min_ac_kwh in the alert window before the evaluation, and (when the run ended less than
    the silence limit before it) that the open device_silent alerts are exactly the silenced devices."""
    evaluated = api.post("/v1/alerts/evaluate")
    if evaluated.status_code == 403:
        return {"checked": False, "problems": [], "note": "alerts not verified: the key lacks the admin scope"}
    if evaluated.status_code != 200:
        return {"checked": False, "problems": [f"POST /v1/alerts/evaluate answered {evaluated.status_code}"]}

    def open_alerts(rule: str) -> list[dict]:
        found, cursor = [], None
        while True:
            page = api.get("/v1/alerts", params={"state": "open", "rule": rule, "limit": 1000,
                                                 **({"cursor": cursor} if cursor else {})}).json()
            found += page["alerts"]
            if not (cursor := page["next"]):
                return found

    ours = {vehicle_id(i) for i in devices} | {meter_id(i) for i in devices}
    problems: list[str] = []
    faulty = [a for a in open_alerts("faulty_charger") if a["deviceId"] in ours]
    evaluated_at = max((datetime.fromisoformat(a["lastSeenAt"]) for a in faulty), default=datetime.now(end.tzinfo))
    since = evaluated_at - window
    charged = {vehicle_id(i) for i in devices
               if sum(kwh for ts, kwh in recent_ac.get(meter_id(i), []) if since <= ts < evaluated_at) >= min_ac_kwh}
    want = fleet.faulty_vehicles & charged
    got = {a["deviceId"] for a in faulty}
    if got != want:
        problems.append(f"faulty_charger alerts not planted: {sorted(got - want)[:10]}; planted faulty chargers "
                        f"that charged in the window without an alert: {sorted(want - got)[:10]}")
    result = {"checked": True, "faulty_charger": len(got), "planted_faulty_charging": len(want)}
    if datetime.now(end.tzinfo) - end < silence - timedelta(minutes=2) and fleet.silent_devices:
        silent = {a["deviceId"] for a in open_alerts("device_silent") if a["deviceId"] in ours}
        if silent != fleet.silent_devices:
            problems.append(f"device_silent alerts not silenced: {sorted(silent - fleet.silent_devices)[:10]}; "
                            f"silenced without an alert: {sorted(fleet.silent_devices - silent)[:10]}")
        result["device_silent"] = len(silent)
    return {**result, "problems": problems}
