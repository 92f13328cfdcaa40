"""/metrics under `python -m api serve` with several workers: every scrape, whichever worker answers
it, shows the counters of all workers added up and the in-progress gauge of all of them, and a
restarted server counts from zero."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from api.server.process import ApiProcess
from tests.fix_api import Keys
from tests.fix_readings import meter

M = "/v1/telemetry/meters"
INSERTED = "telemetry_readings_total"
REQUESTS = "litestar_requests_total"
DURATIONS = "litestar_request_duration_seconds_count"
IN_PROGRESS = "litestar_requests_in_progress"
SCRAPES = 8


def scrape(server: ApiProcess) -> list[tuple[str, dict[str, str], float]]:
    """One scrape over a new connection (so that any worker may answer): (sample, labels, value)."""
    response = httpx.get(f"{server.url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST  # one charset: Prometheus 3 parses it strictly
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(response.text)
            for s in family.samples]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    return sum(value for sample, have, value in samples if sample == name and labels.items() <= have.items())


def ingest(server: ApiProcess, key: str, readings: list[dict]) -> None:
    """One request per reading, each over a new connection: the kernel hands them to either worker."""
    def send(reading: dict) -> int:
        response = httpx.post(f"{server.url}{M}", json=[reading], headers=Keys.header(key), timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["inserted"]

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(send, readings)) == len(readings)


def metrics_dirs(parent: Path) -> list[Path]:
    return sorted(parent.glob("telemetry-metrics-*"))


def readings_per_worker(metrics_dir: Path) -> list[float]:
    """Inserted readings in each worker's own counter file (prometheus_client names them by pid)."""
    per_worker = []
    for file in sorted(metrics_dir.glob("counter_*.db")):
        samples = [s for metric in MultiProcessCollector.merge([str(file)]) for s in metric.samples]
        per_worker.append(sum(s.value for s in samples if s.name == INSERTED and s.labels["outcome"] == "inserted"))
    return per_worker


@pytest.mark.slow
def test_every_scrape_adds_up_the_counters_of_all_workers(live_server_factory, keys: Keys, tmp_path: Path) -> None:
    server = live_server_factory(workers=2, TMPDIR=str(tmp_path))
    n = 40

    ingest(server, keys.ingest, [meter(i, meter_id=f"MTR-{i:04d}") for i in range(n)])

    for samples in (scrape(server) for _ in range(SCRAPES)):
        assert total(samples, INSERTED, stream="meters", outcome="inserted") == n
        assert total(samples, REQUESTS, method="POST", path=M, status_code="200") == n
        assert total(samples, DURATIONS, method="POST", path=M, status_code="200") == n
        assert total(samples, IN_PROGRESS, path=M) == 0
        # Added up, not listed per process (but for the gauges that describe each worker's own key cache).
        assert not any("pid" in labels for name, labels, _ in samples if not name.startswith("telemetry_api_key_"))
        assert any(name.startswith("telemetry_api_key_") for name, _, _ in samples)
    # Not vacuous: both workers served some of the requests, so each alone would have shown fewer.
    (metrics_dir,) = metrics_dirs(tmp_path)
    per_worker = readings_per_worker(metrics_dir)
    assert len([count for count in per_worker if count > 0]) == 2 and sum(per_worker) == n, per_worker


@pytest.mark.slow
def test_the_in_progress_gauge_counts_the_requests_of_every_worker(live_server_factory, keys: Keys) -> None:
    server = live_server_factory(workers=2)
    release = threading.Event()

    def slow_body() -> Iterator[bytes]:
        # The request is in progress, in whichever worker took it, until its body is complete.
        yield b"["
        release.wait(30)
        yield json.dumps(meter(0)).encode() + b"]"

    def in_progress() -> float:
        return total(scrape(server), IN_PROGRESS, method="POST", path=M)

    with ThreadPoolExecutor(1) as executor:
        held = executor.submit(httpx.post, f"{server.url}{M}", content=slow_body(), timeout=30,
                               headers={**Keys.header(keys.ingest), "Content-Type": "application/json"})
        deadline = time.monotonic() + 10
        while in_progress() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        during = [in_progress() for _ in range(SCRAPES)]
        release.set()
        assert held.result().status_code == 200
    assert during == [1] * SCRAPES
    assert [in_progress() for _ in range(SCRAPES)] == [0] * SCRAPES


@pytest.mark.slow
def test_a_restarted_server_counts_from_zero(live_server_factory, keys: Keys, tmp_path: Path) -> None:
    first = live_server_factory(workers=2, TMPDIR=str(tmp_path))
    ingest(first, keys.ingest, [meter(i, meter_id="MTR-A") for i in range(3)])
    assert total(scrape(first), INSERTED, outcome="inserted") == 3
    assert len(metrics_dirs(tmp_path)) == 1
    first.stop()
    assert metrics_dirs(tmp_path) == []  # its own directory is removed at exit

    second = live_server_factory(workers=2, TMPDIR=str(tmp_path))
    assert total(scrape(second), INSERTED, outcome="inserted") == 0
    ingest(second, keys.ingest, [meter(0, meter_id="MTR-B")])
    assert [total(scrape(second), INSERTED, outcome="inserted") for _ in range(SCRAPES)] == [1] * SCRAPES


@pytest.mark.slow
def test_a_directory_given_by_the_operator_is_cleared_of_old_metrics_only(live_server_factory, keys: Keys,
                                                                          tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "README").write_text("not ours")
    first = live_server_factory(workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    ingest(first, keys.ingest, [meter(i, meter_id="MTR-A") for i in range(3)])
    first.stop()
    assert list(metrics_dir.glob("counter_*.db"))  # kept at exit: the directory is the operator's

    second = live_server_factory(workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    assert total(scrape(second), INSERTED, outcome="inserted") == 0
    ingest(second, keys.ingest, [meter(0, meter_id="MTR-B")])
    assert total(scrape(second), INSERTED, outcome="inserted") == 1
    assert (metrics_dir / "README").read_text() == "not ours"


def test_a_worker_file_not_yet_sized_does_not_fail_the_scrape(live_server_factory, keys: Keys,
                                                              tmp_path: Path) -> None:
    """A worker creates its metrics file before it sizes it; a scrape in that instant reads an empty
    file (prometheus_client's struct.error, a 500 through Litestar's own controller)."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    server = live_server_factory(workers=2, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    ingest(server, keys.ingest, [meter(i, meter_id="MTR-A") for i in range(3)])
    (metrics_dir / "counter_999999999.db").touch()  # created, not yet sized
    (metrics_dir / "gauge_all_999999999.db").touch()
    assert [total(scrape(server), INSERTED, outcome="inserted") for _ in range(SCRAPES)] == [3] * SCRAPES
