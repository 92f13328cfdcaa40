"""Vehicle-to-meter links: linking, relinking, bulk links, ending a link, and the rule that a meter
feeds one vehicle at a time."""

from __future__ import annotations

import shutil
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from litestar.testing import TestClient

from api.schema.migrations import MigrationError, migrate
from api.server.devices import LINK_SQL
from tests.fix_api import Keys, count_rows
from tests.fix_db import SQL_DIR, Database
from tests.fix_readings import NOW, iso, meter, post, vehicle

ONE_VEHICLE_PER_METER = "0010_one_vehicle_per_meter.sql"


def links(conn: psycopg.Connection) -> list[tuple]:
    """Every stored link as (vehicle, meter, start or None for all history, end or None for open)."""
    return conn.execute(
        """SELECT vehicle_id, meter_id, CASE WHEN isfinite(lower(valid)) THEN lower(valid) END,
                  CASE WHEN NOT upper_inf(valid) THEN upper(valid) END
           FROM telemetry.vehicle_meter_links ORDER BY vehicle_id, lower(valid)""").fetchall()


def link(client: TestClient, key: str, vehicle_id: str, meter_id: str, valid_from: datetime | None = None):
    body = {"meterId": meter_id} | ({"validFrom": iso(valid_from)} if valid_from else {})
    return client.put(f"/v1/vehicles/{vehicle_id}/meter", json=body, headers=Keys.header(key))


def link_many(client: TestClient, key: str, pairs: list[tuple]):
    body = [{"vehicleId": v, "meterId": m} | ({"validFrom": iso(rest[0])} if rest else {}) for v, m, *rest in pairs]
    return client.put("/v1/vehicles/meters", json=body, headers=Keys.header(key))


def end_link(client: TestClient, key: str, vehicle_id: str, at: str | None = None):
    return client.delete(f"/v1/vehicles/{vehicle_id}/meter", params={"at": at} if at else {},
                         headers=Keys.header(key))


def test_a_vehicle_is_linked_relinked_and_its_history_kept(client: TestClient, keys: Keys, conn) -> None:
    headers = Keys.header(keys.ingest)
    first = client.put("/v1/vehicles/EV-1/meter", json={"meterId": "M-1"}, headers=headers)
    assert first.status_code == 200 and first.json() == {"vehicleId": "EV-1", "meterId": "M-1", "validFrom": None,
                                                          "changed": True}
    same = client.put("/v1/vehicles/EV-1/meter", json={"meterId": "M-1"}, headers=headers)
    assert same.json()["changed"] is False
    switch = iso(NOW - timedelta(hours=1))
    relink = client.put("/v1/vehicles/EV-1/meter", json={"meterId": "M-2", "validFrom": switch}, headers=headers)
    assert relink.json()["changed"] is True and relink.json()["meterId"] == "M-2"

    history = client.get("/v1/vehicles/EV-1/meter", headers=Keys.header(keys.read)).json()
    assert history["meterId"] == "M-2"
    assert [(p["meterId"], p["validTo"] is None) for p in history["history"]] == [("M-1", False), ("M-2", True)]
    assert conn.execute("SELECT count(*) FROM telemetry.vehicle_meter_links").fetchone()[0] == 2


def test_links_can_be_made_in_bulk(client: TestClient, keys: Keys, conn) -> None:
    links = [{"vehicleId": f"EV-{i}", "meterId": f"M-{i}"} for i in range(100)]
    response = client.put("/v1/vehicles/meters", json=links, headers=Keys.header(keys.ingest))
    assert response.json() == {"linked": 100, "changed": 100}
    assert conn.execute("SELECT count(DISTINCT vehicle_id) FROM telemetry.vehicle_meter_links").fetchone()[0] == 100
    again = client.put("/v1/vehicles/meters", json=links, headers=Keys.header(keys.ingest))
    assert again.json() == {"linked": 100, "changed": 0}


def test_a_relink_before_the_current_link_started_is_a_conflict(client: TestClient, keys: Keys) -> None:
    headers = Keys.header(keys.ingest)
    client.put("/v1/vehicles/EV-1/meter", json={"meterId": "M-1", "validFrom": iso(NOW)}, headers=headers)
    response = client.put("/v1/vehicles/EV-1/meter",
                          json={"meterId": "M-2", "validFrom": iso(NOW - timedelta(days=1))}, headers=headers)
    assert response.status_code == 409
    assert "EV-1" in response.json()["message"]


def test_a_meter_feeding_another_vehicle_is_a_conflict_and_is_counted_once(client: TestClient, keys: Keys,
                                                                          conn) -> None:
    assert link(client, keys.ingest, "V-1", "M-1").status_code == 200
    post(client, "/v1/telemetry", [meter(i, meter_id="M-1", kwh=1.0) for i in range(3)]
         + [vehicle(i, vehicle_id=v, kwh=0.9) for i in range(3) for v in ("V-1", "V-2")], keys.ingest)

    response = link(client, keys.ingest, "V-2", "M-1")

    assert response.status_code == 409
    assert response.json() == {"error": "conflict", "message": response.json()["message"]}
    assert response.json()["message"].startswith("meter M-1 feeds vehicle V-1 since the beginning of its history;")
    assert "V-2" in response.json()["message"]
    assert links(conn) == [("V-1", "M-1", None, None)]
    fleet = client.get("/v1/analytics/fleet", headers=Keys.header(keys.read)).json()
    assert fleet["linkedVehicles"] == 1 and fleet["vehicles"] == 2
    assert fleet["acConsumedKwh"] == pytest.approx(3 * 1.0 + 0.003)
    assert fleet["unlinkedDcDeliveredKwh"] == pytest.approx(3 * 0.9 + 0.003)


def test_a_link_overlapping_the_meters_past_with_another_vehicle_is_a_conflict(client: TestClient, keys: Keys,
                                                                              conn) -> None:
    switch = NOW - timedelta(hours=2)
    assert link(client, keys.ingest, "V-1", "M-1", NOW - timedelta(days=2)).status_code == 200
    assert link(client, keys.ingest, "V-1", "M-2", switch).status_code == 200

    # A first link covers all history, and M-1 fed V-1 until the switch.
    response = link(client, keys.ingest, "V-2", "M-1")
    assert response.status_code == 409
    assert response.json()["message"].startswith(
        f"meter M-1 fed vehicle V-1 from {iso(NOW - timedelta(days=2))} until {iso(switch)};")
    too_early = link(client, keys.ingest, "V-2", "M-1", switch - timedelta(minutes=1))
    assert too_early.status_code == 409 and "V-1" in too_early.json()["message"]

    assert link(client, keys.ingest, "V-2", "M-1", switch).status_code == 200
    assert links(conn) == [("V-1", "M-1", NOW - timedelta(days=2), switch), ("V-1", "M-2", switch, None),
                           ("V-2", "M-1", switch, None)]


def test_two_vehicles_claiming_one_meter_in_one_bulk_request_is_a_conflict(client: TestClient, keys: Keys,
                                                                           conn) -> None:
    response = link_many(client, keys.ingest, [("V-1", "M-1"), ("V-2", "M-7"), ("V-3", "M-7"), ("V-4", "M-4")])

    assert response.status_code == 409 and response.json()["error"] == "conflict"
    message = response.json()["message"]
    assert "M-7" in message and "V-2" in message and "V-3" in message
    assert links(conn) == []


def test_a_bulk_request_changes_nothing_when_any_link_conflicts(client: TestClient, keys: Keys, conn) -> None:
    assert link_many(client, keys.ingest, [("V-1", "M-1", NOW), ("V-2", "M-2")]).status_code == 200
    before = links(conn)

    taken = link_many(client, keys.ingest, [("V-3", "M-3"), ("V-1", "M-5"), ("V-4", "M-2")])
    assert taken.status_code == 409 and taken.json()["message"].startswith("meter M-2 feeds vehicle V-2")
    too_early = link_many(client, keys.ingest, [("V-3", "M-3"), ("V-1", "M-5", NOW - timedelta(hours=1))])
    assert too_early.status_code == 409 and "V-1" in too_early.json()["message"]

    assert links(conn) == before


def test_vehicles_swap_meters_in_one_bulk_request(client: TestClient, keys: Keys, conn) -> None:
    assert link_many(client, keys.ingest, [("V-1", "M-1"), ("V-2", "M-2"), ("V-3", "M-3")]).json() == {
        "linked": 3, "changed": 3}
    swap = NOW - timedelta(minutes=30)

    response = link_many(client, keys.ingest, [("V-1", "M-2", swap), ("V-2", "M-1", swap), ("V-3", "M-3", swap)])

    assert response.status_code == 200 and response.json() == {"linked": 3, "changed": 2}
    assert links(conn) == [("V-1", "M-1", None, swap), ("V-1", "M-2", swap, None), ("V-2", "M-2", None, swap),
                           ("V-2", "M-1", swap, None), ("V-3", "M-3", None, None)]


def test_a_vehicle_twice_in_one_bulk_request_is_422(client: TestClient, keys: Keys, conn) -> None:
    response = link_many(client, keys.ingest, [("V-1", "M-1"), ("V-2", "M-2"), ("V-1", "M-3")])

    assert response.status_code == 422 and response.json()["error"] == "invalid_input"
    assert "V-1" in response.json()["message"]
    assert links(conn) == []


def test_ending_a_link_frees_the_meter_for_another_vehicle(client: TestClient, keys: Keys, conn) -> None:
    start, moved = NOW - timedelta(days=1), NOW - timedelta(hours=3)
    assert link(client, keys.ingest, "V-1", "M-1", start).status_code == 200

    ended = end_link(client, keys.ingest, "V-1", iso(moved))

    assert ended.status_code == 200
    assert ended.json() == {"vehicleId": "V-1", "meterId": "M-1", "validFrom": iso(start), "validTo": iso(moved)}
    assert link(client, keys.ingest, "V-2", "M-1", moved).status_code == 200
    assert links(conn) == [("V-1", "M-1", start, moved), ("V-2", "M-1", moved, None)]
    history = client.get("/v1/vehicles/V-1/meter", headers=Keys.header(keys.read)).json()
    assert history["meterId"] is None and history["history"][-1]["validTo"] == iso(moved)

    # Without a meter, a vehicle's next link starts now by default, after the one that ended.
    relinked = link(client, keys.ingest, "V-1", "M-3")
    assert relinked.status_code == 200 and relinked.json()["changed"] is True
    assert links(conn)[1][:2] == ("V-1", "M-3") and links(conn)[1][2] >= NOW


def test_ending_a_link_at_the_default_time_ends_it_now(client: TestClient, keys: Keys, conn) -> None:
    assert link(client, keys.ingest, "V-1", "M-1").status_code == 200
    before = datetime.now(UTC)

    ended = end_link(client, keys.ingest, "V-1")

    assert ended.status_code == 200 and ended.json()["validFrom"] is None
    (_, _, _, end), = links(conn)
    assert before - timedelta(seconds=1) <= end <= datetime.now(UTC)


def test_ending_a_link_needs_an_open_link_and_a_time_after_its_start(client: TestClient, keys: Keys, conn) -> None:
    start = NOW - timedelta(hours=1)
    assert link(client, keys.ingest, "V-1", "M-1", start).status_code == 200

    assert end_link(client, keys.ingest, "V-9").status_code == 404
    for at in (iso(start), iso(start - timedelta(hours=1))):
        response = end_link(client, keys.ingest, "V-1", at)
        assert response.status_code == 422 and "V-1" in response.json()["message"], at
    assert end_link(client, keys.ingest, "V-1", "2026-11-22T10:00:00").status_code == 422  # no offset
    assert end_link(client, keys.read, "V-1").status_code == 403
    assert links(conn) == [("V-1", "M-1", start, None)]

    assert end_link(client, keys.ingest, "V-1").status_code == 200
    assert end_link(client, keys.ingest, "V-1").status_code == 404  # nothing open any more


def test_bulk_links_of_the_full_request_size_take_a_constant_number_of_locks(database: Database, api_settings) -> None:
    """The shared lock table holds max_locks_per_transaction (64 by default) per connection: a lock per
    vehicle exhausts it ("out of shared memory") on default settings."""
    n = api_settings.max_rows
    with psycopg.connect(database.app_url) as conn:  # as the API's role, in one transaction
        rows = conn.execute(LINK_SQL, ([f"V-{i}" for i in range(n)], [f"M-{i}" for i in range(n)],
                                       [None] * n)).fetchall()
        held = conn.execute("""SELECT count(*), count(*) FILTER (WHERE locktype = 'advisory')
                               FROM pg_locks WHERE pid = pg_backend_pid()""").fetchone()
        conn.commit()
    assert len(rows) == n and all(changed for *_, changed in rows)
    total, advisory = held
    assert advisory == 0 and total < 64, held


def test_bulk_links_of_the_full_request_size_succeed_quickly(client: TestClient, keys: Keys, conn,
                                                            api_settings) -> None:
    n = api_settings.max_rows
    started = time.monotonic()
    first = link_many(client, keys.ingest, [(f"V-{i}", f"M-{i}") for i in range(n)])
    assert first.status_code == 200 and first.json() == {"linked": n, "changed": n}
    # Every vehicle moves to its neighbour's meter at once: each meter is freed and taken in one request.
    rotated = link_many(client, keys.ingest, [(f"V-{i}", f"M-{(i + 1) % n}") for i in range(n)])
    assert rotated.status_code == 200 and rotated.json() == {"linked": n, "changed": n}
    elapsed = time.monotonic() - started

    assert conn.execute("SELECT count(*), count(*) FILTER (WHERE upper_inf(valid)) "
                        "FROM telemetry.vehicle_meter_links").fetchone() == (2 * n, n)
    assert conn.execute("SELECT meter_id FROM telemetry.vehicle_meter_links "
                        "WHERE vehicle_id = 'V-7' AND upper_inf(valid)").fetchone() == ("M-8",)
    assert elapsed < 60, elapsed  # a few seconds; generous for shared machines


def test_concurrent_links_of_one_meter_are_serialised(database: Database) -> None:
    """The second writer waits for the first and then sees its link: a clean conflict, not a race."""
    outcome: dict[str, str] = {}

    def link_second(conn: psycopg.Connection) -> None:
        try:
            conn.execute(LINK_SQL, (["V-2"], ["M-1"], [None]))
            outcome["second"] = "linked"
        except psycopg.errors.ExclusionViolation as exc:
            outcome["second"] = exc.diag.message_primary

    with psycopg.connect(database.app_url) as first, psycopg.connect(database.app_url, autocommit=True) as second:
        first.execute(LINK_SQL, (["V-1"], ["M-1"], [None]))
        waiting = threading.Thread(target=link_second, args=(second,))
        waiting.start()
        waiting.join(1)
        assert waiting.is_alive()  # blocked behind the first transaction's lock
        first.commit()
        waiting.join(30)
    assert outcome["second"].startswith("meter M-1 feeds vehicle V-1 since"), outcome


def test_the_migration_refuses_meters_shared_by_overlapping_links(empty_database: Database, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    (sql_dir / "versioned" / ONE_VEHICLE_PER_METER).unlink()
    migrate(empty_database.url, sql_dir)
    with empty_database.connect(autocommit=True) as conn:
        conn.execute("""INSERT INTO telemetry.vehicle_meter_links (vehicle_id, meter_id, valid) VALUES
                        ('V-1', 'M-1', tstzrange('-infinity', NULL)),
                        ('V-2', 'M-1', tstzrange('2026-11-01T00:00:00Z', NULL)),
                        ('V-3', 'M-3', tstzrange('-infinity', NULL))""")

    with pytest.raises(MigrationError, match=r"meter M-1: vehicle V-1 .* overlaps vehicle V-2"):
        migrate(empty_database.url, SQL_DIR)

    with empty_database.connect(autocommit=True) as conn:
        conn.execute("UPDATE telemetry.vehicle_meter_links SET valid = tstzrange('-infinity', '2026-11-01T00:00:00Z') "
                     "WHERE vehicle_id = 'V-1'")
    assert ONE_VEHICLE_PER_METER in migrate(empty_database.url, SQL_DIR).applied
    with empty_database.connect() as conn, pytest.raises(psycopg.errors.ExclusionViolation):
        conn.execute("INSERT INTO telemetry.vehicle_meter_links (vehicle_id, meter_id, valid) "
                     "VALUES ('V-4', 'M-3', tstzrange(now(), NULL))")


def test_links_need_the_ingest_scope(client: TestClient, keys: Keys, conn) -> None:
    assert link(client, keys.read, "V-1", "M-1").status_code == 403
    assert end_link(client, keys.read, "V-1").status_code == 403
    assert count_rows(conn)["vehicle_meter_links"] == 0
