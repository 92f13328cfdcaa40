"""A simulate or backfill run: register the links, generate the fleet's minutes, send them with the
requested mess through the chosen way in (HTTP, asynchronous HTTP or MQTT), pace them (simulate) or
not (backfill), report and optionally verify (after the platform's log has drained, for the
asynchronous ways in)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from loadgen.drain import wait_drained
from loadgen.fleet import Fleet, Mess, meter_id, vehicle_id
from loadgen.mqtt import DEFAULT_MQTT_URL, MqttPublisher, encode_messages
from loadgen.sender import Sender
from loadgen.verify import verify, verify_alerts


@dataclass
class RunOptions:
    url: str
    api_key: str
    devices: int = 10_000
    first_device: int = 0
    """Devices are numbered from here (MTR-<n>, EV-<n>): runs with disjoint numbers can share a platform."""
    mode: str = "simulate"
    speedup: float = 1.0
    duration_s: float = 60.0
    hours: float = 1.0
    seed: int = 1
    batch_size: int = 1000
    concurrency: int = 4
    duplicate_rate: float = 0.0
    out_of_order_rate: float = 0.0
    late_rate: float = 0.0
    silent_rate: float = 0.0
    """Share of chargers (meter and vehicle) that stop reporting halfway through the run."""
    alert_window_s: float = 6 * 3600
    """The server's ALERT_WINDOW, for --verify's check of the faulty_charger alerts."""
    alert_silence_s: float = 15 * 60
    """The server's ALERT_SILENCE, for --verify's check of the device_silent alerts."""
    min_ac_kwh: float = 0.1
    """The server's VERDICT_MIN_AC_KWH."""
    report_path: Path | None = None
    verify: bool = False
    database_url: str | None = None
    transport: str = "http"
    """http (200 after commit), http-async (Prefer: respond-async, 202 once logged) or mqtt (QoS 1)."""
    mqtt_url: str = DEFAULT_MQTT_URL
    report_every: int = 1
    """A simulation over MQTT: minutes of readings a device publishes as one array, once every that many
    minutes (1: each reading as it is taken)."""
    nats_url: str | None = None
    """For --verify with an asynchronous transport: where to watch the writers drain the log."""
    drain_timeout_s: float = 300.0
    stream: str = "TELEMETRY"

    @property
    def asynchronous(self) -> bool:
        return self.transport != "http"


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


def send_offset(step: int, chunk: int, chunks: int, minutes: int, minutes_per_step: int, minute_wall: float) -> float:
    """Seconds after the run's start at which a paced step's chunk goes out: the step's chunks spread
    over the minutes it holds (the last step may hold fewer), so the run ends with its last minute."""
    first = step * minutes_per_step
    held = min(minutes, first + minutes_per_step) - first
    return (first + chunk / chunks * held) * minute_wall


async def _run(opts: RunOptions, console: Console, before_verify: Callable[[], None] | None) -> dict:
    if opts.verify and opts.asynchronous and not opts.nats_url:
        raise SystemExit("--verify after an asynchronous run waits for the writers: it needs the NATS URL")
    if opts.report_every < 1 or (opts.report_every > 1 and (opts.transport != "mqtt" or opts.mode != "simulate")):
        raise SystemExit("--report-every applies to a simulation over MQTT only, "
                         "and takes a positive number of minutes")
    fleet = Fleet(opts.devices, seed=opts.seed, silent_share=opts.silent_rate, first=opts.first_device)
    numbers = range(opts.first_device, opts.first_device + opts.devices)
    mess = Mess(opts.duplicate_rate, opts.out_of_order_rate, opts.late_rate, seed=opts.seed)
    sender = Sender(opts.url, opts.api_key, opts.concurrency, asynchronous=opts.transport == "http-async")
    publisher: Sender | MqttPublisher = sender
    now = datetime.now(UTC).replace(microsecond=0)
    if opts.mode == "backfill":
        minutes = int(opts.hours * 60)
        start = now.replace(second=0) - timedelta(minutes=minutes)
        minute_wall = 0.0
    else:
        minutes = max(1, math.ceil(opts.duration_s * opts.speedup / 60))
        minute_wall = 60.0 / opts.speedup
        # The simulated clock ends at the wall clock's end (or just before it, on a whole minute), so
        # no timestamp is ever in the future; devices that report every N minutes send a minute's
        # reading up to N - 1 simulated minutes early in the run's schedule (send_offset), so their
        # clock ends that much sooner.
        start = (now + timedelta(seconds=opts.duration_s - (opts.report_every - 1) * minute_wall)
                 - timedelta(minutes=minutes)).replace(second=0, microsecond=0)
    end = start + timedelta(minutes=minutes)
    fleet.silent_from = minutes // 2

    links = [{"vehicleId": vehicle_id(i), "meterId": meter_id(i)} for i in numbers]
    for i in range(0, len(links), 5000):
        response = await sender.request("PUT", "/v1/vehicles/meters", links[i:i + 5000])
        if response.status_code != 200:
            raise SystemExit(f"registering the vehicle-to-meter links failed: {response.status_code} {response.text}")
    if opts.transport == "mqtt":
        publisher = MqttPublisher(opts.mqtt_url, opts.api_key, opts.concurrency)
    # A backfill over MQTT sends a device's readings of several minutes as one array, and so does a
    # simulation of devices that report every few minutes: one step is that many minutes, a device's
    # readings of the step one message. Otherwise a step is one minute.
    minutes_per_step = opts.report_every
    if opts.transport == "mqtt" and opts.mode == "backfill":
        minutes_per_step = min(opts.batch_size, 60)

    generated: dict[str, tuple[int, float]] = {}
    # AC of charging minutes near the end of the run, per meter, for the faulty_charger alerts'
    # trailing window: (timestamp, kWh), kept only for the last window and an hour.
    recent_ac: dict[str, list[tuple[datetime, float]]] = {}
    recent_from = end - timedelta(seconds=opts.alert_window_s) - timedelta(hours=1)

    def prepare(step: int) -> list[tuple[object, int]]:
        """The step's minutes of readings with the mess applied, encoded in batches (HTTP) or chunks of
        messages (MQTT). Runs in a worker thread, so the event loop keeps reading responses (and timing
        them truly) meanwhile."""
        outgoing = []
        for m in range(step * minutes_per_step, min(minutes, (step + 1) * minutes_per_step)):
            readings = fleet.minute(start, m)
            for r in readings:
                device = r.get("meterId") or r["vehicleId"]
                n, total = generated.get(device, (0, 0.0))
                generated[device] = (n + 1, total + r.get("kwhConsumedAc", r.get("kwhDeliveredDc", 0.0)))
                if r.get("kwhConsumedAc") and start + timedelta(minutes=m) >= recent_from:
                    recent_ac.setdefault(device, []).append((datetime.fromisoformat(r["timestamp"]), r["kwhConsumedAc"]))
            outgoing += mess.apply(m, readings)
            if m == minutes - 1:
                outgoing += mess.flush()
        if opts.transport == "mqtt":
            return encode_messages(outgoing, opts.batch_size if minutes_per_step > 1 else 1)
        batches = [outgoing[i:i + opts.batch_size] for i in range(0, len(outgoing), opts.batch_size)]
        return [(msgspec.json.encode(batch), len(batch)) for batch in batches]

    try:
        t0 = last_line = time.monotonic()
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                      TextColumn("{task.completed}/{task.total} min"),
                      TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task(opts.mode, total=minutes, status="")
            steps = math.ceil(minutes / minutes_per_step)
            upcoming = asyncio.create_task(asyncio.to_thread(prepare, 0))
            for step in range(steps):
                batches = await upcoming
                if step + 1 < steps:  # the next step is prepared while this one goes out
                    upcoming = asyncio.create_task(asyncio.to_thread(prepare, step + 1))
                for s, (body, rows) in enumerate(batches):
                    if minute_wall:  # spread the step's readings over its minutes, as devices would
                        due = t0 + send_offset(step, s, len(batches), minutes, minutes_per_step, minute_wall)
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await publisher.submit(body, rows)
                st = publisher.stats
                outcome = (f"accepted {st.accepted:,}" if opts.asynchronous
                           else f"inserted {st.inserted:,}  dup {st.duplicates:,}")
                status = f"sent {st.sent:,}  {outcome}  rejected {st.rejected:,}  failed {st.failed:,}"
                done = min(minutes, (step + 1) * minutes_per_step)
                progress.update(task, completed=done, status=status)
                if not console.is_terminal and time.monotonic() - last_line >= 10:  # logs, CI, containers
                    console.print(f"{opts.mode}: minute {done}/{minutes}, {status}")
                    last_line = time.monotonic()
            await publisher.drain()
    except BaseException:  # a failed run leaves no connection (nor MQTT connection process) behind in its caller
        if isinstance(publisher, MqttPublisher):
            publisher.abort()
        await sender.close()
        raise
    report = {"mode": opts.mode, "transport": opts.transport, "devices": 2 * opts.devices, "minutes": minutes,
              "window": {"from": start.isoformat(), "to": end.isoformat()},
              **publisher.stats.report(opts.asynchronous),
              "silent_devices": sorted(fleet.silent_devices), "silent_since": (start + timedelta(minutes=minutes // 2)).isoformat()}
    await publisher.close()
    if publisher is not sender:
        await sender.close()

    if opts.verify:
        if opts.asynchronous:
            console.print(f"waiting for the writers to drain the log (at most {opts.drain_timeout_s:g} s) ...")
            report["drain"] = await wait_drained(opts.nats_url, opts.drain_timeout_s, console, opts.stream)
        if before_verify:
            before_verify()
        charged = {vehicle_id(i) for i in numbers if generated.get(meter_id(i), (0, 0.0))[1] >= 0.1}
        with httpx.Client(base_url=opts.url, headers={"Authorization": f"Bearer {opts.api_key}"}, timeout=120) as api:
            problems = verify(database_url=opts.database_url, api=api, start=start, end=end, devices=numbers,
                              generated=generated, inserted=report.get("inserted"), failed=report["failed"],
                              ambiguous=report["ambiguous"],
                              charged_faulty=fleet.faulty_vehicles & charged)
            alerts = verify_alerts(api, fleet=fleet, devices=numbers, end=end, recent_ac=recent_ac,
                                   window=timedelta(seconds=opts.alert_window_s),
                                   silence=timedelta(seconds=opts.alert_silence_s), min_ac_kwh=opts.min_ac_kwh)
        problems += alerts.pop("problems")
        if not report.get("drain", {"drained": True})["drained"]:
            problems.insert(0, f"the log was not drained after {opts.drain_timeout_s:g} s")
        report["verification"] = {"passed": not problems, "problems": problems,
                                  "planted_faulty": sorted(fleet.faulty_vehicles & charged), "alerts": alerts}
    return report


def run(opts: RunOptions, console: Console | None = None, before_verify: Callable[[], None] | None = None) -> dict:
    console = console or Console(stderr=True)
    report = asyncio.run(_run(opts, console, before_verify))
    lat = report["latency_ms"]
    outcome = (f"accepted {report['accepted']:,}" if opts.asynchronous
               else f"inserted {report['inserted']:,}, duplicates {report['duplicates']:,}")
    console.print(
        f"[bold]{opts.mode} done[/] ({opts.transport}): sent {report['sent']:,}, {outcome}, "
        f"rejected {report['rejected']:,}, failed {report['failed']:,}; "
        f"{report['rows_per_s']:,} rows/s; latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms; "
        f"errors by status {report['errors_by_status'] or 'none'}")
    if "verification" in report:
        v = report["verification"]
        console.print("[bold green]verification passed[/]" if v["passed"] else
                      "[bold red]verification FAILED[/]:\n  " + "\n  ".join(v["problems"]))
    if opts.report_path:
        opts.report_path.write_text(json.dumps(report, indent=2))
    return report
