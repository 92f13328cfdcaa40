"""The EnergyGrid pull of 500 devices at the vendor's real limit (one request a second)."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx

from energygrid.connector import PullConfig, pull_once
from bench.env import free_port, fresh_database


def run(devices: int = 500) -> dict:
    url = fresh_database("telemetry_bench_energygrid")
    port = free_port()
    mock = subprocess.Popen([sys.executable, "-m", "loadgen", "energygrid-mock", "--port", str(port),
                             "--devices", str(devices)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                httpx.post(f"http://127.0.0.1:{port}/device/real/query", json={}, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        time.sleep(1.1)  # let the probe's slot in the rate limit pass
        report = pull_once(PullConfig(url=f"http://127.0.0.1:{port}", devices=devices), url, None)
    finally:
        mock.terminate()
        mock.wait(10)
    return {"devices": devices, "fetched": len(report.readings), "duration_s": round(report.duration_s, 2),
            "requests": sum(report.stats.statuses.values()), "http_429": report.stats.statuses.get(429, 0),
            "retries": report.stats.retries, "malformed": report.malformed, "inserted": report.inserted}
