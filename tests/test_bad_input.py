"""Bad input is answered with the right 4xx, names the problem, and writes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from litestar.testing import TestClient

from api.server.app import create_app
from tests.fix_api import Keys, count_rows, settings_for
from tests.fix_readings import iso, meter, post, vehicle

NOW = datetime.now(UTC)
M = "/v1/telemetry/meters"
V = "/v1/telemetry/vehicles"
MIXED = "/v1/telemetry"


def with_field(reading: dict, **changes: object) -> dict:
    return {**reading, **changes}


def without(reading: dict, field: str) -> dict:
    return {k: v for k, v in reading.items() if k != field}


# (id, path, body, content type, status, row index, field)
CATALOGUE = [
    ("truncated-json", M, json.dumps([meter(0), meter(1)])[:-15], "application/json", 422, None, None),
    ("not-json", M, "meterId=1", "application/json", 422, None, None),
    ("nan-literal", M, json.dumps([meter(0)]).replace("0.125", "NaN"), "application/json", 422, None, None),
    ("infinity-literal", M, json.dumps([meter(0)]).replace("0.125", "Infinity"), "application/json", 422, None, None),
    ("huge-number", M, json.dumps([meter(0)]).replace("0.125", "1e400"), "application/json", 422, 0,
     "kwhConsumedAc"),
    ("string-number", M, [meter(0), with_field(meter(1), voltage="230")], "application/json", 422, 1, "voltage"),
    ("bool-number", V, [with_field(vehicle(0), soc=True)], "application/json", 422, 0, "soc"),
    ("negative-kwh", M, [meter(0), meter(1), with_field(meter(2), kwhConsumedAc=-0.1)], "application/json", 422, 2,
     "kwhConsumedAc"),
    ("voltage-over-1000", M, [with_field(meter(0), voltage=1000.5)], "application/json", 422, 0, "voltage"),
    ("soc-over-100", V, [with_field(vehicle(0), soc=100.01)], "application/json", 422, 0, "soc"),
    ("temp-below-minus-40", V, [with_field(vehicle(0), batteryTemp=-41)], "application/json", 422, 0,
     "batteryTemp"),
    ("missing-field", V, [without(vehicle(0), "soc")], "application/json", 422, 0, None),
    ("unknown-field", M, [with_field(meter(0), extra=1)], "application/json", 422, 0, None),
    ("bad-device-id", M, [with_field(meter(0), meterId="bad id!")], "application/json", 422, 0, "meterId"),
    ("long-device-id", M, [with_field(meter(0), meterId="x" * 65)], "application/json", 422, 0, "meterId"),
    ("device-id-line-break", M, [meter(0), meter(1), with_field(meter(2), meterId="MTR-2\n")], "application/json",
     422, 2, "meterId"),
    ("device-id-not-ascii", V, [vehicle(0), with_field(vehicle(1), vehicleId="EV-\u00e91")], "application/json",
     422, 1, "vehicleId"),
    ("one-reading-bad-device-id", V, with_field(vehicle(0), vehicleId="EV 1"), "application/json", 422, 0,
     "vehicleId"),
    ("ndjson-bad-device-id", M, "\n".join(json.dumps(r) for r in [meter(0), with_field(meter(1), meterId="a/b")]),
     "application/x-ndjson", 422, 1, "meterId"),
    ("csv-bad-device-id", M, f"meterId,kwhConsumedAc,voltage,timestamp\nM-1,1,230,{iso(NOW)}\nM 2,1,230,{iso(NOW)}",
     "text/csv", 422, 1, "meterId"),
    ("mixed-bad-device-id", MIXED, [meter(0), with_field(vehicle(1), vehicleId="EV;1")], "application/json", 422, 1,
     "vehicleId"),
    ("malformed-timestamp", M, [with_field(meter(0), timestamp="yesterday")], "application/json", 422, 0,
     "timestamp"),
    ("naive-timestamp", M, [with_field(meter(0), timestamp="2026-11-22T10:00:00")], "application/json", 422, 0,
     "timestamp"),
    ("far-future", M, [meter(0), with_field(meter(1), timestamp=iso(NOW + timedelta(hours=1)))],
     "application/json", 422, 1, "timestamp"),
    ("older-than-retention", M, [with_field(meter(0), timestamp=iso(NOW - timedelta(days=31)))],
     "application/json", 422, 0, "timestamp"),
    ("empty-array", M, [], "application/json", 422, None, None),
    ("empty-body", M, "", "application/json", 422, None, None),
    ("vehicle-on-meter-endpoint", M, [vehicle(0)], "application/json", 422, 0, None),
    ("both-ids", MIXED, [meter(0), {**meter(1), "vehicleId": "EV-1"}], "application/json", 422, 1, None),
    ("neither-id", MIXED, [without(meter(0), "meterId")], "application/json", 422, 0, None),
    ("mixed-not-an-array", MIXED, "42", "application/json", 422, None, None),
    ("ndjson-bad-line", M, json.dumps(meter(0)) + "\n{\"meterId\": \n", "application/x-ndjson", 422, 1, None),
    ("csv-wrong-header", M, "meterId,kwh,voltage,timestamp\nM,1,2,2026-11-22T10:00:00Z", "text/csv", 422, None,
     None),
    ("csv-nan", M, f"meterId,kwhConsumedAc,voltage,timestamp\nM-1,nan,230,{iso(NOW)}", "text/csv", 422, 0,
     "kwhConsumedAc"),
    ("csv-inf", M, f"meterId,kwhConsumedAc,voltage,timestamp\nM-1,inf,230,{iso(NOW)}", "text/csv", 422, 0,
     "kwhConsumedAc"),
    ("csv-short-row", M, f"meterId,kwhConsumedAc,voltage,timestamp\nM-1,1,{iso(NOW)}", "text/csv", 422, 0, None),
    ("csv-header-only", M, "meterId,kwhConsumedAc,voltage,timestamp\n", "text/csv", 422, None, None),
    ("wrong-content-type", M, [meter(0)], "text/plain", 415, None, None),
    ("form-content-type", M, [meter(0)], "application/x-www-form-urlencoded", 415, None, None),
    ("mixed-as-csv", MIXED, "meterId\nM", "text/csv", 415, None, None),
]


@pytest.mark.parametrize(("path", "body", "content_type", "status", "index", "field"),
                         [case[1:] for case in CATALOGUE], ids=[case[0] for case in CATALOGUE])
def test_bad_input_is_rejected_and_writes_nothing(
    client: TestClient, keys: Keys, conn: psycopg.Connection,
    path: str, body: object, content_type: str, status: int, index: int | None, field: str | None,
) -> None:
    before = count_rows(conn)
    response = post(client, path, body, keys.ingest, content_type)

    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] in ("invalid_input", "unsupported_media_type") and payload["message"]
    if index is not None:
        first = payload["errors"][0]
        assert first["index"] == index and first["reason"]
        if field is not None:
            assert first["field"] == field
    assert count_rows(conn) == before


def test_every_failing_row_is_reported_up_to_a_limit(client: TestClient, keys: Keys, conn) -> None:
    batch = [with_field(meter(i), voltage=-1 if i % 2 else 230) for i in range(100)]
    errors = post(client, M, batch, keys.ingest).json()["errors"]
    assert [e["index"] for e in errors] == list(range(1, 41, 2))
    assert {e["field"] for e in errors} == {"voltage"}
    assert count_rows(conn)["meter_readings"] == 0


def test_bad_device_ids_and_bad_values_are_reported_in_row_order(client: TestClient, keys: Keys, conn) -> None:
    batch = [meter(i) for i in range(6)]
    batch[1] = with_field(batch[1], meterId="MTR 1")
    batch[3] = with_field(batch[3], voltage=-1)
    batch[4] = with_field(batch[4], meterId="MTR-4\n")

    response = post(client, M, batch, keys.ingest)

    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [(1, "meterId"), (3, "voltage"), (4, "meterId")]
    assert "A-Za-z0-9_.:-" in errors[0]["reason"]
    assert count_rows(conn)["meter_readings"] == 0


def test_a_bad_device_id_deep_in_a_large_batch_is_found(client: TestClient, keys: Keys, conn) -> None:
    batch = [meter(i) for i in range(5000)]
    batch[4321] = with_field(batch[4321], meterId="MTR-4321!")
    errors = post(client, M, batch, keys.ingest).json()["errors"]
    assert [(e["index"], e["field"]) for e in errors] == [(4321, "meterId")]
    assert count_rows(conn)["meter_readings"] == 0


def test_one_bad_reading_rejects_the_whole_request(client: TestClient, keys: Keys, conn) -> None:
    batch = [meter(i) for i in range(500)] + [with_field(meter(500), kwhConsumedAc=-1)]
    assert post(client, M, batch, keys.ingest).status_code == 422
    assert count_rows(conn)["meter_readings"] == 0


def test_too_many_rows_is_413(database, keys: Keys, conn) -> None:
    with TestClient(create_app(settings_for(database, max_rows=10))) as client:
        response = post(client, M, [meter(i) for i in range(11)], keys.ingest)
        assert response.status_code == 413 and "limit is 10" in response.json()["message"]
        assert post(client, M, [meter(i) for i in range(10)], keys.ingest).json()["inserted"] == 10


def test_an_oversized_body_is_413(database, keys: Keys, conn) -> None:
    with TestClient(create_app(settings_for(database, max_body_bytes=2048))) as small:
        response = post(small, M, [meter(i) for i in range(100)], keys.ingest)
        assert response.status_code == 413
        assert post(small, M, [meter(0)], keys.ingest).status_code == 200
    assert count_rows(conn)["meter_readings"] == 1
