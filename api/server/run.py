"""Runs the ASGI app under Granian, with metrics shared by its worker processes."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from api.settings import Settings


def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    # Every worker is a process with its own counters: in prometheus_client's multiprocess mode each
    # writes them to files in one directory, and /metrics (any worker) adds them all up. The
    # variable is set before Granian starts (forks or spawns) its workers, which import
    # prometheus_client and read it then. An earlier run's files must not be added in: a directory
    # of our own is new and removed at exit; in one given by the operator, only the metric files
    # (*.db) of earlier runs are deleted, never anything else in it.
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owned = not metrics_dir
    if owned:
        metrics_dir = tempfile.mkdtemp(prefix="telemetry-metrics-")
    else:
        os.makedirs(metrics_dir, exist_ok=True)
        for stale in Path(metrics_dir).glob("*.db"):
            stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        Granian(
            "api.server.app:create_app",
            factory=True,
            address=host,
            port=port,
            interface=Interfaces.ASGI,
            workers=workers,
            loop=Loops.auto,
            log_access=False,
        ).serve()
    finally:
        if owned:
            _remove(Path(metrics_dir))


def _remove(directory: Path, attempts: int = 20) -> None:
    """Remove the metrics directory; a worker still shutting down may write a last file into it
    while it is being removed, so try again for a moment."""
    for _ in range(attempts):
        shutil.rmtree(directory, ignore_errors=True)
        if not directory.exists():
            return
        time.sleep(0.1)
