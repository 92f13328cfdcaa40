"""The load generator against the API, as users run it: the full fleet at a speed-up, with
verification that every accepted reading is stored exactly once and the analytics flag the planted
faulty chargers."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.env import ApiProcess, create_key, fresh_database


def run(devices: int, speedup: float, duration: str, batch_size: int, concurrency: int) -> dict:
    url = fresh_database("telemetry_bench_loadgen")
    key = create_key(url)
    with ApiProcess(url, DB_POOL_MAX=str(max(concurrency, 4))) as api, tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "simulate.json"
        finished = subprocess.run(
            [sys.executable, "-m", "loadgen", "simulate", "--url", api.url, "--api-key", key,
             "--meters", str(devices), "--vehicles", str(devices), "--speedup", str(speedup),
             "--duration", duration, "--batch-size", str(batch_size), "--concurrency", str(concurrency),
             "--verify", "--database-url", url, "--report", str(report)], check=False)
        result = json.loads(report.read_text())
    result.update(exit_status=finished.returncode, speedup=speedup, duration=duration, batch_size=batch_size,
                  concurrency=concurrency, target_rows_per_s=round(2 * devices * speedup / 60, 1))
    return result
