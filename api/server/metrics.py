"""GET /metrics: Prometheus text, the samples of every worker process added up.

Litestar's own `PrometheusController` reads every worker's file in the multiprocess directory. A
worker creates its file before it sizes it (prometheus_client's `MmapedDict`), and a scrape that
meets a file in that instant fails with `struct.error`: a 500 (prometheus_client issue #1199). An
empty file holds no samples yet, so this controller leaves such files out instead."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from litestar import Controller, get
from litestar.response import Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector


class WorkerFilesCollector(Collector):
    """The samples of every worker's file in `directory` that has been sized (holds a header)."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def collect(self) -> Iterable[Metric]:
        files = []
        for file in sorted(self.directory.glob("*.db")):
            try:
                if file.stat().st_size > 0:
                    files.append(str(file))
            except FileNotFoundError:
                continue
        return MultiProcessCollector.merge(files, accumulate=True)


def prometheus_response(registry: CollectorRegistry = REGISTRY) -> Response:
    """The registry's samples in Prometheus text, for the API's and the writer's /metrics. The header as
    it is: a media type would get a second `charset` from Litestar, which strict parsers (Prometheus
    3's) refuse."""
    return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


class MetricsController(Controller):
    path = "/metrics"

    @get(sync_to_thread=False)
    def metrics(self) -> Response:
        registry = REGISTRY
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            registry = CollectorRegistry()
            registry.register(WorkerFilesCollector(directory))
        return prometheus_response(registry)
