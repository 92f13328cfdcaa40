"""A project-local NATS server and `python -m api writer` as child processes, started as users start
them: for the test suite and the benchmarks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from api.server.process import ChildProcess, free_port, free_ports
from api.settings import PROJECT_ROOT

LOCAL_NATS = PROJECT_ROOT / "scripts" / "local-nats.sh"


class NatsServer:
    """nats-server with JetStream and MQTT in its own directory, on free ports (scripts/local-nats.sh)."""

    def __init__(self, directory: Path, port: int | None = None, mqtt_port: int | None = None) -> None:
        self.dir = directory
        ports = free_ports(2)
        self.port = port or next(p for p in ports if p != mqtt_port)
        self.mqtt_port = mqtt_port or next(p for p in ports if p != self.port)
        self.url = ""
        self.start()

    @property
    def pid_file(self) -> Path:
        return self.dir / "nats.pid"

    @property
    def users_file(self) -> Path:
        return self.dir / "auth.conf"

    def _script(self, *args: str) -> str:
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        env.update(NATS_DIR=str(self.dir), NATS_PORT=str(self.port), MQTT_PORT=str(self.mqtt_port))
        done = subprocess.run(["bash", str(LOCAL_NATS), *args], env=env, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"local-nats.sh {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done.stdout

    def start(self) -> None:
        last = self._script("start").strip().splitlines()[-1]
        self.url = re.fullmatch(r"NATS_URL=(\S+)", last)[1]

    def stop(self) -> None:
        """The devices shut out first (`close_mqtt`), then SIGTERM."""
        self._script("stop")

    def close_mqtt(self) -> None:
        """Closes the MQTT devices' connections and refuses them until the next start."""
        self._script("close-mqtt")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown."""
        pid = int(self.pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    def log(self) -> str:
        return (self.dir / "nats.log").read_text(errors="replace")


class WriterProcess(ChildProcess):
    """`python -m api writer` in a subprocess (its own process group), ready once its health says so."""

    def __init__(self, database_url: str, nats_url: str, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "api", "writer"],
            env={**os.environ, "DATABASE_URL": database_url, "NATS_URL": nats_url, "WRITER_PORT": str(self.port),
                 **env},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        output = self.output()  # read before stop() closes the log
        self.stop()
        raise RuntimeError(f"the writer did not become ready: {output[-3000:]}")

    def metrics(self) -> dict[str, float]:
        """The writer's Prometheus samples, `name{labels}` -> value."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples
