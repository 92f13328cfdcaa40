"""Ingestion over HTTP: every accepted shape, deduplication, current state and links."""

from __future__ import annotations

import datetime
import json
from datetime import timedelta

import psycopg
import pytest
from litestar.testing import TestClient

from tests.fix_api import Keys, count_rows
from tests.fix_readings import NOW, iso, meter, post, vehicle

def test_a_single_meter_reading_is_stored_exactly_as_sent(client: TestClient, keys: Keys, conn) -> None:
    reading = {"meterId": "MTR-0001", "kwhConsumedAc": 0.1234567890123, "voltage": 230.1,
               "timestamp": "2026-11-22T10:00:00+01:00"}
    reading["timestamp"] = iso(NOW - timedelta(minutes=3))
    response = post(client, "/v1/telemetry/meters", reading, keys.ingest)

    assert response.status_code == 200, response.text
    assert response.json() == {"inserted": 1, "duplicates": 0}
    row = conn.execute("SELECT meter_id, time, kwh_consumed_ac, voltage FROM telemetry.meter_readings").fetchall()
    assert row == [("MTR-0001", NOW - timedelta(minutes=3), 0.1234567890123, 230.1)]


def test_an_array_of_vehicle_readings_is_stored(client: TestClient, keys: Keys, conn) -> None:
    readings = [vehicle(i) for i in range(50)]
    response = post(client, "/v1/telemetry/vehicles", readings, keys.ingest)

    assert response.json() == {"inserted": 50, "duplicates": 0}
    total, soc_sum = conn.execute(
        "SELECT sum(kwh_delivered_dc), sum(soc) FROM telemetry.vehicle_readings").fetchone()
    assert total == pytest.approx(sum(r["kwhDeliveredDc"] for r in readings), rel=1e-12)
    assert soc_sum == pytest.approx(sum(r["soc"] for r in readings), rel=1e-12)


def test_timestamps_with_offsets_are_stored_as_instants(client: TestClient, keys: Keys, conn) -> None:
    local = (NOW - timedelta(minutes=30)).astimezone(__import__("datetime").timezone(timedelta(hours=5, minutes=30)))
    post(client, "/v1/telemetry/meters", {**meter(), "timestamp": local.isoformat()}, keys.ingest)
    assert conn.execute("SELECT time FROM telemetry.meter_readings").fetchone()[0] == NOW - timedelta(minutes=30)


def test_ndjson_is_accepted(client: TestClient, keys: Keys, conn) -> None:
    body = "\n".join(json.dumps(meter(i)) for i in range(5)) + "\n"
    response = post(client, "/v1/telemetry/meters", body, keys.ingest, "application/x-ndjson")
    assert response.json() == {"inserted": 5, "duplicates": 0}
    assert count_rows(conn)["meter_readings"] == 5


def test_csv_with_a_header_row_is_accepted(client: TestClient, keys: Keys, conn) -> None:
    rows = [vehicle(i) for i in range(4)]
    header = "vehicleId,soc,kwhDeliveredDc,batteryTemp,timestamp"
    body = header + "\n" + "\n".join(
        f"{r['vehicleId']},{r['soc']},{r['kwhDeliveredDc']},{r['batteryTemp']},{r['timestamp']}" for r in rows)
    response = post(client, "/v1/telemetry/vehicles", body, keys.ingest, "text/csv")
    assert response.json() == {"inserted": 4, "duplicates": 0}
    stored = conn.execute("SELECT kwh_delivered_dc FROM telemetry.vehicle_readings ORDER BY time DESC").fetchall()
    assert [r[0] for r in stored] == [r["kwhDeliveredDc"] for r in rows]


def test_a_mixed_batch_is_split_by_shape(client: TestClient, keys: Keys, conn) -> None:
    response = post(client, "/v1/telemetry", [meter(0), vehicle(0), meter(1), vehicle(1), vehicle(2)], keys.ingest)
    assert response.json() == {"inserted": 5, "duplicates": 0}
    counts = count_rows(conn)
    assert (counts["meter_readings"], counts["vehicle_readings"]) == (2, 3)


def test_a_repeated_batch_stores_nothing_new_and_reports_duplicates(client: TestClient, keys: Keys, conn) -> None:
    batch = [meter(i) for i in range(20)]
    assert post(client, "/v1/telemetry/meters", batch, keys.ingest).json() == {"inserted": 20, "duplicates": 0}
    assert post(client, "/v1/telemetry/meters", batch, keys.ingest).json() == {"inserted": 0, "duplicates": 20}
    overlapping = batch[10:] + [meter(i) for i in range(20, 25)]
    assert post(client, "/v1/telemetry/meters", overlapping, keys.ingest).json() == {"inserted": 5, "duplicates": 10}
    assert count_rows(conn)["meter_readings"] == 25


def test_duplicates_inside_one_batch_are_counted_once(client: TestClient, keys: Keys, conn) -> None:
    response = post(client, "/v1/telemetry/meters", [meter(0), meter(0), meter(1)], keys.ingest)
    assert response.json() == {"inserted": 2, "duplicates": 1}
    assert count_rows(conn)["meter_readings"] == 2


def test_duplicates_never_reach_the_aggregates(client: TestClient, keys: Keys, conn) -> None:
    batch = [meter(i, minutes_ago=120) for i in range(30)]
    for _ in range(3):
        post(client, "/v1/telemetry/meters", batch, keys.ingest)
    aggregated = conn.execute(
        "SELECT sum(kwh_consumed_ac), sum(readings) FROM telemetry.meter_energy_hourly").fetchone()
    raw = conn.execute("SELECT sum(kwh_consumed_ac), count(*) FROM telemetry.meter_readings").fetchone()
    assert aggregated[1] == raw[1] == 30
    assert aggregated[0] == pytest.approx(raw[0], rel=1e-9)
    daily = conn.execute("SELECT sum(kwh_consumed_ac), sum(readings) FROM telemetry.meter_energy_daily").fetchone()
    assert daily[1] == 30 and daily[0] == pytest.approx(raw[0], rel=1e-9)


def test_status_keeps_the_newest_reading_whatever_the_arrival_order(client: TestClient, keys: Keys) -> None:
    newest = vehicle(0, minutes_ago=1)
    post(client, "/v1/telemetry/vehicles", [newest], keys.ingest)
    post(client, "/v1/telemetry/vehicles", [vehicle(i, minutes_ago=5) for i in range(5)], keys.ingest)

    status = client.get("/v1/vehicles/EV-0001/status", headers=Keys.header(keys.read))
    assert status.status_code == 200
    body = status.json()
    assert body["timestamp"].startswith(newest["timestamp"][:19])
    assert body["soc"] == newest["soc"] and body["kwhDeliveredDc"] == newest["kwhDeliveredDc"]

    post(client, "/v1/telemetry/meters", [meter(0, minutes_ago=9)], keys.ingest)
    post(client, "/v1/telemetry/meters", [meter(0, minutes_ago=2, kwh=0.5)], keys.ingest)
    body = client.get("/v1/meters/MTR-0001/status", headers=Keys.header(keys.read)).json()
    assert body["kwhConsumedAc"] == 0.5 and body["meterId"] == "MTR-0001"


def test_status_of_an_unknown_device_is_404(client: TestClient, keys: Keys) -> None:
    for path in ("/v1/meters/NOPE/status", "/v1/vehicles/NOPE/status"):
        response = client.get(path, headers=Keys.header(keys.read))
        assert response.status_code == 404
        assert "NOPE" in response.json()["message"]


def test_the_aggregates_equal_the_raw_readings(client: TestClient, keys: Keys, conn: psycopg.Connection) -> None:
    import random

    rng = random.Random(7)
    readings = [meter(0, minutes_ago=rng.randrange(1, 600), meter_id=f"M-{rng.randrange(5)}",
                      kwh=rng.random()) for _ in range(400)]
    post(client, "/v1/telemetry/meters", readings, keys.ingest)
    post(client, "/v1/telemetry/meters", readings[::3], keys.ingest)  # retries
    for aggregate, width, buckets in (("meter_energy_hourly", "1 hour", 10), ("meter_energy_6h", "6 hours", 2),
                                      ("meter_energy_daily", "1 day", 1)):
        compare = conn.execute(
            f"""SELECT r.meter_id, r.bucket, r.kwh, a.kwh_consumed_ac, r.n, a.readings
                FROM (SELECT meter_id, time_bucket('{width}', time) bucket, sum(kwh_consumed_ac) kwh, count(*) n
                      FROM telemetry.meter_readings GROUP BY 1, 2) r
                FULL JOIN telemetry.{aggregate} a USING (meter_id, bucket)"""
        ).fetchall()
        assert len({row[1] for row in compare}) >= buckets, aggregate  # ten hours of readings
        for _, _, raw_kwh, agg_kwh, raw_n, agg_n in compare:
            assert raw_n == agg_n, aggregate
            assert agg_kwh == pytest.approx(raw_kwh, rel=1e-9), aggregate


def test_any_rfc3339_offset_is_accepted_everywhere(client: TestClient, keys: Keys, conn) -> None:
    """Offsets up to 23:59 are valid RFC 3339, beyond PostgreSQL's own limit of 15:59."""
    far_east = "2026-11-22T10:00:00+16:00"
    link = client.put("/v1/vehicles/EV-1/meter", json={"meterId": "M-1", "validFrom": far_east},
                      headers=Keys.header(keys.ingest))
    assert link.status_code == 200 and link.json()["validFrom"] == "2026-11-21T18:00:00Z"
    reading = {**meter(0), "timestamp": (NOW - timedelta(minutes=3)).astimezone(
        __import__("datetime").timezone(timedelta(hours=-18))).isoformat()}
    assert post(client, "/v1/telemetry/meters", reading, keys.ingest).json() == {"inserted": 1, "duplicates": 0}
    assert conn.execute("SELECT time FROM telemetry.meter_readings").fetchone()[0] == NOW - timedelta(minutes=3)
    answer = client.get("/v1/analytics/performance/EV-1", params={"from": far_east, "to": "2026-11-23T10:00:00+16:00"},
                        headers=Keys.header(keys.read))
    assert answer.status_code == 200 and answer.json()["from"] == "2026-11-21T18:00:00Z"


def test_every_field_of_a_bulk_batch_is_stored_exactly_as_sent(client: TestClient, keys: Keys, conn) -> None:
    """The write path builds PostgreSQL's binary COPY data itself: ids of every allowed length and
    character, microseconds, any offset and the full precision of each number survive it."""
    zones = [datetime.timezone(timedelta(hours=h, minutes=m)) for h, m in ((0, 0), (5, 30), (-9, -45), (14, 0))]
    ids = ["A", "x" * 64, "Az09_.:-", "MTR:site-7.bay_2"]
    sent = []
    for i in range(2000):
        at = (NOW - timedelta(minutes=5 + i, microseconds=i * 7919 % 1_000_000)).astimezone(zones[i % 4])
        sent.append({"vehicleId": f"{ids[i % 4]}{i // 4 % 10}"[:64], "soc": i % 10001 / 100,
                     "kwhDeliveredDc": 1 / (i + 3), "batteryTemp": -40 + i % 160 + 0.123456789012345 * (i % 2),
                     "timestamp": at.isoformat()})
    meters = [{"meterId": r["vehicleId"], "kwhConsumedAc": r["kwhDeliveredDc"] * 1e6, "voltage": 1000 - r["soc"] * 10,
               "timestamp": r["timestamp"]} for r in sent]

    assert post(client, "/v1/telemetry/vehicles", sent, keys.ingest).json() == {"inserted": 2000, "duplicates": 0}
    assert post(client, "/v1/telemetry/meters", meters, keys.ingest).json() == {"inserted": 2000, "duplicates": 0}

    def instant(text: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(text)

    stored = conn.execute("SELECT vehicle_id, time, soc, kwh_delivered_dc, battery_temp FROM telemetry.vehicle_readings"
                          " ORDER BY vehicle_id, time").fetchall()
    assert stored == sorted((r["vehicleId"], instant(r["timestamp"]), r["soc"], r["kwhDeliveredDc"], r["batteryTemp"])
                            for r in sent)
    stored = conn.execute("SELECT meter_id, time, kwh_consumed_ac, voltage FROM telemetry.meter_readings"
                          " ORDER BY meter_id, time").fetchall()
    assert stored == sorted((r["meterId"], instant(r["timestamp"]), r["kwhConsumedAc"], r["voltage"]) for r in meters)
