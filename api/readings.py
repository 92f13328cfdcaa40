"""Readings as devices send them: msgspec Structs, and decoding of JSON, NDJSON and CSV bodies
into validated readings with row-level errors."""

from __future__ import annotations

import csv
import io
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

import msgspec
from msgspec import Meta

# (?!\n): in Python, $ also matches before a final line break, which the database's rule refuses.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$(?!\n)"
DeviceId = Annotated[str, Meta(pattern=DEVICE_ID_PATTERN, min_length=1, max_length=64,
                               description="1-64 characters of A-Z a-z 0-9 _ . : -")]
# In readings the id's characters are checked once per batch (check_device_ids), not by msgspec: a
# pattern is a regex call per reading, which cost most of the decoding time of a bulk request.
ReadingDeviceId = Annotated[str, Meta(min_length=1, max_length=64, extra_json_schema={"pattern": DEVICE_ID_PATTERN},
                                      description="1-64 characters of A-Z a-z 0-9 _ . : -")]
_DEVICE_ID_CHARS = re.compile(r"[A-Za-z0-9_.:-]*")
_DEVICE_ID_REASON = f"Expected `str` matching regex {DEVICE_ID_PATTERN!r}"
# le=max float rejects Infinity, which CSV text can spell; NaN fails every bound.
Kwh = Annotated[float, Meta(ge=0, le=sys.float_info.max, description="Energy of the interval ending at timestamp")]
Timestamp = Annotated[datetime, Meta(tz=True, description="RFC 3339 with an offset")]
MAX_REPORTED_ERRORS = 20


# gc=False: readings hold scalars only, so the garbage collector need not track the tens of
# thousands decoded every second.
class MeterReading(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True, gc=False):
    """A smart meter's reading (grid side, AC)."""

    meter_id: ReadingDeviceId
    kwh_consumed_ac: Kwh
    voltage: Annotated[float, Meta(ge=0, le=1000)]
    timestamp: Timestamp


class VehicleReading(msgspec.Struct, rename="camel", forbid_unknown_fields=True, frozen=True, gc=False):
    """A vehicle's or charger's reading (battery side, DC)."""

    vehicle_id: ReadingDeviceId
    soc: Annotated[float, Meta(ge=0, le=100)]
    kwh_delivered_dc: Kwh
    battery_temp: Annotated[float, Meta(ge=-40, le=120)]
    timestamp: Timestamp


STREAMS: dict[str, type[MeterReading] | type[VehicleReading]] = {"meters": MeterReading, "vehicles": VehicleReading}


class RowError(msgspec.Struct, omit_defaults=True):
    index: int
    reason: str
    field: str | None = None


class BadInput(Exception):
    """The request is rejected as a whole; nothing of it is written."""

    def __init__(self, status: int, message: str, errors: list[RowError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors or []


@dataclass(slots=True)
class Batch:
    meters: list[MeterReading] = field(default_factory=list)
    vehicles: list[VehicleReading] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.meters) + len(self.vehicles)


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int
    max_future_skew: timedelta
    max_age: timedelta


_PATH = re.compile(r" - at `\$(?:\[(\d+)\])?\.?([A-Za-z0-9_]*)")


def _row_error(exc: msgspec.MsgspecError, default_index: int) -> RowError:
    text = str(exc)
    match = _PATH.search(text)
    reason = text[: match.start()] if match else text
    index = default_index
    name = None
    if match:
        if match[1] is not None:
            index = int(match[1])
        name = match[2] or None
    return RowError(index=index, field=name, reason=reason)


_decoders: dict[Any, msgspec.json.Decoder] = {}


def decoder(kind: Any) -> msgspec.json.Decoder:
    """The JSON decoder of a type, made once (the stream writer decodes MQTT readings with these too)."""
    if kind not in _decoders:
        _decoders[kind] = msgspec.json.Decoder(kind)
    return _decoders[kind]


def device_id(reading: MeterReading | VehicleReading) -> str:
    """The meter's or the vehicle's id of a reading."""
    return reading.meter_id if type(reading) is MeterReading else reading.vehicle_id


def _device_id_error(reading: MeterReading | VehicleReading, index: int) -> RowError | None:
    if _DEVICE_ID_CHARS.fullmatch(device_id(reading)):
        return None
    return RowError(index=index, reason=_DEVICE_ID_REASON,
                    field="meterId" if type(reading) is MeterReading else "vehicleId")


def check_device_ids(rows: list) -> list:
    """The rows, if every device id is made of the allowed characters (their lengths msgspec checked):
    one regex over all the ids joined, and row by row only to name the failing rows."""
    if type(rows[0]) is MeterReading and all(type(r) is MeterReading for r in rows):
        joined = "".join([r.meter_id for r in rows])
    else:
        joined = "".join([device_id(r) for r in rows])
    if _DEVICE_ID_CHARS.fullmatch(joined):
        return rows
    errors = [e for index, row in enumerate(rows) if (e := _device_id_error(row, index))]
    raise _rejected(errors[:MAX_REPORTED_ERRORS])


def _decode_json_rows(body: bytes, kind: type) -> list:
    """One reading or an array of them. Fast path: one typed decode; on failure, decode element by
    element to report the first failing rows, not just the first."""
    stripped = body.lstrip()
    if not stripped:
        raise BadInput(422, "empty body: send one reading or a non-empty array of readings")
    if stripped[:1] != b"[":
        try:
            return check_device_ids([decoder(kind).decode(body)])
        except msgspec.ValidationError as exc:
            raise BadInput(422, "invalid reading", [_row_error(exc, 0)]) from None
        except msgspec.DecodeError as exc:
            raise BadInput(422, f"malformed JSON: {exc}") from None
    try:
        rows = decoder(list[kind]).decode(body)
    except msgspec.DecodeError as exc:
        if not isinstance(exc, msgspec.ValidationError):
            raise BadInput(422, f"malformed JSON: {exc}") from None
    else:
        return check_device_ids(rows) if rows else rows
    raws = decoder(list[msgspec.Raw]).decode(body)
    return _decode_each(raws, lambda raw: decoder(kind).decode(raw))


def _rejected(errors: list[RowError]) -> BadInput:
    more = "+" if len(errors) >= MAX_REPORTED_ERRORS else ""
    return BadInput(422, f"{len(errors)}{more} invalid readings; nothing was stored", errors)


def _decode_each(items: list, convert: Any) -> list:
    rows, errors = [], []
    for index, item in enumerate(items):
        try:
            row = convert(item)
        except msgspec.MsgspecError as exc:
            error = _row_error(exc, index)
            error.index = index
            errors.append(error)
        else:
            if (error := _device_id_error(row, index)) is None:
                rows.append(row)
            else:
                errors.append(error)
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
    if errors:
        raise _rejected(errors)
    return rows


def _decode_ndjson(body: bytes, kind: type) -> list:
    lines = [line for line in body.split(b"\n") if line.strip()]
    if not lines:
        raise BadInput(422, "empty body: send one reading per line")
    try:
        return check_device_ids(decoder(list[kind]).decode(b"[" + b",".join(lines) + b"]"))
    except msgspec.DecodeError:
        pass  # find and report the failing lines below

    def decode_line(line: bytes) -> Any:
        return decoder(kind).decode(line)

    return _decode_each(lines, decode_line)


def _decode_csv(body: bytes, kind: type) -> list:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(422, "CSV must be UTF-8") from None
    try:
        return _decode_csv_text(text, kind)
    except csv.Error as exc:  # a bare carriage return inside a field, a field over the csv module's limit
        raise BadInput(422, f"malformed CSV: {exc}") from None


def _decode_csv_text(text: str, kind: type) -> list:
    reader = csv.DictReader(io.StringIO(text))
    expected = {f.encode_name for f in msgspec.structs.fields(kind)}
    header = set(reader.fieldnames or [])
    if not header:
        raise BadInput(422, "empty body: send a header row of field names, then one reading per row")
    if header != expected:
        missing, unknown = sorted(expected - header), sorted(header - expected)
        raise BadInput(422, f"CSV header must name exactly {sorted(expected)}; missing {missing}, unknown {unknown}")
    records = list(reader)
    if not records:
        raise BadInput(422, "empty batch: the CSV has a header but no readings")

    def convert(record: dict) -> Any:
        if None in record or any(value is None for value in record.values()):
            raise msgspec.ValidationError("row has a different number of fields than the header")
        return msgspec.convert(record, kind, strict=False)

    return _decode_each(records, convert)


def _decode_mixed(body: bytes) -> list:
    try:
        items = decoder(list[dict[str, Any]] | dict[str, Any]).decode(body)
    except msgspec.ValidationError:
        raise BadInput(422, "send a JSON array of readings (objects)") from None
    except msgspec.DecodeError as exc:
        raise BadInput(422, f"malformed JSON: {exc}") from None
    if isinstance(items, dict):
        items = [items]

    def classify(item: dict) -> Any:
        has_meter, has_vehicle = "meterId" in item, "vehicleId" in item
        if has_meter == has_vehicle:
            raise msgspec.ValidationError(
                "a reading carries exactly one of meterId (meter) and vehicleId (vehicle)"
                + (", not both" if has_meter else "")
            )
        return msgspec.convert(item, MeterReading if has_meter else VehicleReading)

    return _decode_each(items, classify)


def parse_body(body: bytes, content_type: str, stream: str | None) -> list:
    """Decode a request body into readings; stream is 'meters', 'vehicles' or None (mixed)."""
    media = content_type.split(";")[0].strip().lower()
    if stream is None:
        if media != "application/json":
            raise BadInput(415, f"unsupported content type {media or '(none)'!r}: use application/json")
        return _decode_mixed(body)
    kind = STREAMS[stream]
    if media == "application/json":
        return _decode_json_rows(body, kind)
    if media in ("application/x-ndjson", "application/ndjson", "application/jsonl"):
        return _decode_ndjson(body, kind)
    if media == "text/csv":
        return _decode_csv(body, kind)
    raise BadInput(
        415,
        f"unsupported content type {media or '(none)'!r}: use application/json, application/x-ndjson or text/csv",
    )


def validate_batch(rows: list, limits: Limits, now: datetime | None = None) -> Batch:
    """Checks that need the whole batch or the clock; splits readings by stream."""
    if not rows:
        raise BadInput(422, "empty batch: send at least one reading")
    if len(rows) > limits.max_rows:
        raise BadInput(413, f"{len(rows)} readings in one request; the limit is {limits.max_rows}")
    now = now or datetime.now(timezone.utc)
    newest, oldest = now + limits.max_future_skew, now - limits.max_age
    # Fast path, in C: the batch's time range is within the limits and the batch is of one stream.
    timestamps = [row.timestamp for row in rows]
    if oldest <= min(timestamps) and max(timestamps) <= newest:
        meters = [row for row in rows if type(row) is MeterReading]
        if len(meters) == len(rows):
            return Batch(meters=list(rows))
        if not meters:
            return Batch(vehicles=list(rows))
    batch, errors = Batch(), []
    for index, row in enumerate(rows):
        ts = row.timestamp
        if ts > newest:
            errors.append(RowError(index, f"more than {limits.max_future_skew} in the future", "timestamp"))
        elif ts < oldest:
            errors.append(RowError(index, f"older than the accepted age ({limits.max_age}, the raw retention "
                                          "less the aggregate refresh margin)", "timestamp"))
        elif type(row) is MeterReading:
            batch.meters.append(row)
        else:
            batch.vehicles.append(row)
        if len(errors) >= MAX_REPORTED_ERRORS:
            break
    if errors:
        raise _rejected(errors)
    return batch
