"""The analytics never read raw chunks outside the window's edges: whole hours and days come from the
aggregates. Checked on PostgreSQL's own per-chunk scan counters, for the exact SQL the API runs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from api.server import analytics
from api.db.pool import session_options
from api.settings import Settings
from api.ops.maintenance import run_refresh_policies
from tests.fix_db import Database, ingest_rows

RAW_SCANS = """
SELECT c.chunk_name, c.range_start, c.range_end, coalesce(s.seq_scan, 0) + coalesce(s.idx_scan, 0)
FROM timescaledb_information.chunks c
JOIN pg_stat_user_tables s ON s.relid = format('%I.%I', c.chunk_schema, c.chunk_name)::regclass
WHERE c.hypertable_schema = 'telemetry' AND c.hypertable_name IN ('meter_readings', 'vehicle_readings')
"""


def _scans(observer: psycopg.Connection) -> dict[str, tuple[datetime, datetime, int]]:
    return {name: (start, end, n) for name, start, end, n in observer.execute(RAW_SCANS)}


THRESHOLDS = {"healthy": 0.85, "degraded": 0.75, "min_ac_kwh": 0.1}


def _load_six_days(database: Database) -> datetime:
    """Three linked vehicles and their meters, a reading every ten minutes for six days, aggregates
    refreshed; returns the first day."""
    day0 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=7)
    steps = range(0, 6 * 24 * 6)
    meters = [(f"M-{d}", day0 + timedelta(minutes=10 * i), 0.5 + d / 10, 230.0) for d in range(3) for i in steps]
    vehicles = [(f"V-{d}", day0 + timedelta(minutes=10 * i), 50.0, 0.45, 30.0) for d in range(3) for i in steps]
    with database.connect(autocommit=True) as conn:
        ingest_rows(conn, meters, vehicles)
        for d in range(3):
            conn.execute("SELECT * FROM telemetry.link_vehicle(%s, %s)", (f"V-{d}", f"M-{d}"))
        run_refresh_policies(conn)
        # The load and the refresh read every raw chunk. Their scan counts must be in the shared
        # statistics before the first snapshot: left pending, they are flushed when this backend exits,
        # which can come after the observer's first read and count as scans of the first query.
        conn.execute("SELECT pg_stat_force_next_flush()")
    return day0


def _raw_chunks_read(database: Database, start: datetime, end: datetime):
    """Runs every analytics query the API makes over [start, end) three times on one API-like session
    (per-device reads run on plans cached for the session: generic plans, whose chunk exclusion
    happens at executor startup; the fleet on plans made per call) and yields, per run, the query
    and the raw chunks it read, with their ranges."""
    queries = [
        (analytics.PERFORMANCE_SQL, {"vehicle": "V-1", "from": start, "to": end, **THRESHOLDS}),
        (analytics.SERIES_SQL, {"vehicle": "V-1", "from": start, "to": end, "bucket": timedelta(hours=1)}),
        (analytics.SERIES_SQL, {"vehicle": "V-1", "from": start, "to": end, "bucket": timedelta(days=1)}),
        (analytics.FLEET_SQL, {"from": start, "to": end, "worst": 10, **THRESHOLDS}),
    ]
    options = session_options(Settings(database_url=database.url))
    with database.connect(autocommit=True) as observer, database.connect(autocommit=True, options=options) as api:
        for sql, params in queries * 3:
            before = _scans(observer)
            rows = api.execute(sql, params).fetchall()
            assert rows
            api.execute("SELECT pg_stat_force_next_flush()")  # flushed before this statement returns
            after = _scans(observer)
            yield sql, {name: after[name][:2] for name, (_, _, n) in after.items() if n > before[name][2]}


def test_analytics_read_raw_chunks_only_at_the_window_edges(database: Database) -> None:
    day0 = _load_six_days(database)
    start = day0 + timedelta(days=1, hours=7, minutes=13)
    end = day0 + timedelta(days=4, hours=3, minutes=22)
    head, tail = (start, start.replace(minute=0) + timedelta(hours=1)), (end.replace(minute=0), end)
    for sql, scanned in _raw_chunks_read(database, start, end):
        assert scanned, "the edges of the window were not read from raw readings at all"
        for name, (chunk_start, chunk_end) in scanned.items():
            at_edge = any(chunk_start < edge_end and edge_start < chunk_end for edge_start, edge_end in (head, tail))
            assert at_edge, f"{sql.split('FROM')[1][:45]} read raw chunk {name} [{chunk_start}, {chunk_end})"


def test_a_window_of_whole_hours_reads_no_raw_chunk(database: Database) -> None:
    # No partial hour: every part comes from the aggregates, and the raw parts, empty, are skipped by
    # their one-time bound test, on the cached per-device plans too (no index descent on any chunk).
    day0 = _load_six_days(database)
    start, end = day0 + timedelta(days=1, hours=7), day0 + timedelta(days=4, hours=3)
    for sql, scanned in _raw_chunks_read(database, start, end):
        assert not scanned, f"{sql.split('FROM')[1][:45]} read raw chunks {sorted(scanned)}"


def test_a_window_of_whole_ten_minute_slots_reads_no_raw_chunk(database: Database) -> None:
    # Edges on ten-minute boundaries inside hours: the ten-minute rows carry them, and the raw
    # stretches, empty, are skipped like the whole-hours ones.
    day0 = _load_six_days(database)
    start, end = day0 + timedelta(days=1, hours=7, minutes=40), day0 + timedelta(days=4, hours=3, minutes=10)
    for sql, scanned in _raw_chunks_read(database, start, end):
        assert not scanned, f"{sql.split('FROM')[1][:45]} read raw chunks {sorted(scanned)}"
