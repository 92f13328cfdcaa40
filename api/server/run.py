"""Runs the ASGI app under Granian, with metrics shared by its worker processes."""

from __future__ import annotations

import os
import shutil
import tempfile

from api.settings import Settings




def serve(settings: Settings, host: str, port: int, workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops

    # Every worker is a process with its own counters: in prometheus_client's multiprocess mode each
    # writes them to files in one directory, and /metrics (any worker) adds them all up. The
    # directory must start empty, so that counters of an earlier run are not added in.
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    owned = metrics_dir is None
    if owned:
        metrics_dir = tempfile.mkdtemp(prefix="telemetry-metrics-")
    else:
        shutil.rmtree(metrics_dir, ignore_errors=True)
        os.makedirs(metrics_dir)
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
            shutil.rmtree(metrics_dir, ignore_errors=True)
