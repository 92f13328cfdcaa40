"""`python -m api serve` as a child process, started as users start it and stopped with its
workers: for the test suite and the benchmarks, which measure and test the real server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO

import httpx


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: each socket stays bound until all are chosen (one at a time, the kernel may
    hand out the port it just released again)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


class ChildProcess:
    """A command of the platform in a subprocess of its own process group, its output in `log`."""

    process: subprocess.Popen
    log: IO[bytes]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def kill(self) -> None:
        """SIGKILL to the process group: no graceful shutdown, work in flight is cut."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM to the process group; SIGKILL if it has not stopped within 15 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()


class ApiProcess(ChildProcess):
    """`python -m api serve` in a subprocess (its own process group), as users run it; used by the
    benchmarks and the tests. `server` picks the ASGI server for comparisons."""

    def __init__(self, database_url: str, port: int | None = None, workers: int = 1, server: str = "granian",
                 **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        if server == "granian":
            command = [sys.executable, "-m", "api", "serve", "--port", str(self.port), "--workers", str(workers)]
        else:
            command = [sys.executable, "-m", "uvicorn", "api.server.app:create_app", "--factory", "--port", str(self.port),
                       "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
        self.process = subprocess.Popen(
            command, env={**os.environ, "DATABASE_URL": database_url, "MAINTENANCE_INTERVAL_S": "0", **env},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        # Ready: the database answers and, under Granian, every worker has started. A server stopped
        # while a worker is still starting sometimes hangs in Granian's shutdown until SIGKILL.
        started = [] if server != "granian" else [f"Started worker-{n}" for n in range(1, workers + 1)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready and all(line in self.output() for line in started):
                return
            time.sleep(0.1)
        output = self.output()  # read before stop() closes the log
        self.stop()
        raise RuntimeError(f"the API did not become ready: {output[-2000:]}")

    def __enter__(self) -> ApiProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
