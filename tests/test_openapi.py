"""The OpenAPI document at /schema/openapi.json and its interactive page: a bearer scheme every
protected operation requires (and the server enforces), the ingestion bodies in their three media
types, and the error answers with the one error body the server really sends."""

from __future__ import annotations

import json
import re

import jsonschema_rs
import pytest
from litestar.testing import TestClient

from tests.fix_api import Keys
from tests.fix_readings import meter, post, vehicle

OPEN = {"GET /health/live", "GET /health/ready", "GET /metrics"}
INGESTION = {"POST /v1/telemetry/meters": "meters", "POST /v1/telemetry/vehicles": "vehicles",
             "POST /v1/telemetry": None}
ANALYTICS = {"GET /v1/analytics/performance/{vehicle_id}", "GET /v1/analytics/fleet",
             "GET /v1/analytics/vehicles/{vehicle_id}/series"}
KEY_MANAGEMENT = {"POST /v1/keys", "GET /v1/keys", "DELETE /v1/keys/{key_id}"}
DEVICES = {"GET /v1/meters/{meter_id}/status", "GET /v1/vehicles/{vehicle_id}/status",
           "PUT /v1/vehicles/{vehicle_id}/meter", "PUT /v1/vehicles/meters", "GET /v1/vehicles/{vehicle_id}/meter"}
ALERTS = {"GET /v1/alerts", "GET /v1/alerts/{alert_id}", "POST /v1/alerts/{alert_id}/acknowledge"}
WEBHOOKS = {"POST /v1/webhooks", "DELETE /v1/webhooks/{webhook_id}", "GET /v1/webhooks/{webhook_id}/deliveries"}
# Operations whose input errors this suite knows to be documented as 422.
TAKE_INPUT = set(INGESTION) | ANALYTICS | KEY_MANAGEMENT | DEVICES | ALERTS | WEBHOOKS
ERROR_BODY = "#/components/schemas/ErrorBody"
READING_FIELDS = {"meters": {"meterId", "kwhConsumedAc", "voltage", "timestamp"},
                  "vehicles": {"vehicleId", "soc", "kwhDeliveredDc", "batteryTemp", "timestamp"}}


@pytest.fixture
def document(client: TestClient) -> dict:
    response = client.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict) -> dict[str, dict]:
    """'METHOD /path' -> operation object."""
    return {f"{method.upper()} {path}": operation for path, item in document["paths"].items()
            for method, operation in item.items() if method in ("get", "put", "post", "delete", "patch")}


def protected(document: dict) -> dict[str, dict]:
    return {name: op for name, op in operations(document).items() if name not in OPEN}


def validator(document: dict, schema: dict, closed: bool = False) -> jsonschema_rs.Validator:
    """A JSON Schema validator resolving the document's references; `closed`: the error body schemas
    refuse fields they do not document."""
    components = json.loads(json.dumps(document["components"]))
    if closed:
        for name in ("ErrorBody", "ErrorDetail"):
            components["schemas"][name]["additionalProperties"] = False
    return jsonschema_rs.validator_for({**schema, "components": components})


def concrete(name: str) -> tuple[str, str]:
    """(method, a URL) for an operation, any path parameter filled in."""
    method, path = name.split(" ")
    return method, re.sub(r"\{[^}]+\}", "X1", path)


def test_the_document_declares_the_bearer_scheme(document: dict) -> None:
    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    assert "security" not in document  # no global requirement: it would close the open operations too


def test_every_operation_but_health_and_metrics_requires_the_bearer_key(document: dict) -> None:
    everything = operations(document)
    assert OPEN | set(INGESTION) | ANALYTICS | KEY_MANAGEMENT | DEVICES | ALERTS | WEBHOOKS <= set(everything)
    assert not any(path.startswith("/schema") for path in document["paths"])
    for name, operation in everything.items():
        if name in OPEN:
            assert not operation.get("security"), name
        else:
            assert operation.get("security") == [{"apiKey": []}], name


def scopes_of(name: str) -> set[str]:
    """The scopes that may call an operation: admin for keys, webhooks and evaluating alerts, ingest or admin to
    acknowledge an alert, read for the other reads, ingest for the other writes."""
    if " /v1/keys" in name or " /v1/webhooks" in name or name == "POST /v1/alerts/evaluate":
        return {"admin"}
    if name.endswith("/acknowledge"):
        return {"ingest", "admin"}
    return {"read"} if name.startswith("GET ") else {"ingest"}


def test_the_documented_security_is_what_the_server_enforces(client: TestClient, keys: Keys, document: dict) -> None:
    for name in operations(document):
        method, url = concrete(name)
        anonymous = client.request(method, url)
        if name in OPEN:
            assert anonymous.status_code == 200, name
            continue
        assert anonymous.status_code == 401, name
        assert anonymous.headers["www-authenticate"].startswith("Bearer"), name
        for scope in ("ingest", "read", "admin"):
            status = client.request(method, url, headers=Keys.header(getattr(keys, scope))).status_code
            assert (status == 403) is (scope not in scopes_of(name)), (name, scope, status)


def test_meter_and_vehicle_ingestion_document_json_ndjson_and_csv_bodies(document: dict) -> None:
    ops = operations(document)
    for name in ("POST /v1/telemetry/meters", "POST /v1/telemetry/vehicles"):
        stream = INGESTION[name]
        body = ops[name]["requestBody"]
        assert body["required"] is True
        assert set(body["content"]) == {"application/json", "application/x-ndjson", "text/csv"}
        one, many = body["content"]["application/json"]["schema"]["oneOf"]
        assert set(one["properties"]) == set(one["required"]) == READING_FIELDS[stream]
        assert one["additionalProperties"] is False
        assert many == {"type": "array", "minItems": 1, "items": one}
        ndjson = body["content"]["application/x-ndjson"]["schema"]
        assert ndjson["type"] == "string" and "line" in ndjson["description"]
        csv = body["content"]["text/csv"]["schema"]
        header = re.search(r"`([^`]+)`", csv["description"])[1]
        assert csv["type"] == "string" and set(header.split(",")) == READING_FIELDS[stream]


def test_mixed_ingestion_documents_json_only_as_the_server_accepts(client: TestClient, keys: Keys,
                                                                   document: dict) -> None:
    body = operations(document)["POST /v1/telemetry"]["requestBody"]
    assert set(body["content"]) == {"application/json"}
    kinds = body["content"]["application/json"]["schema"]["oneOf"][0]["oneOf"]
    assert [set(kind["properties"]) for kind in kinds] == [READING_FIELDS["meters"], READING_FIELDS["vehicles"]]
    ndjson = post(client, "/v1/telemetry", json.dumps(meter(0)) + "\n", keys.ingest, "application/x-ndjson")
    assert ndjson.status_code == 415


def test_the_documented_reading_schemas_accept_what_devices_send_and_refuse_the_rest(document: dict) -> None:
    ops = operations(document)

    def schema(name: str) -> jsonschema_rs.Validator:
        return validator(document, ops[name]["requestBody"]["content"]["application/json"]["schema"])

    meters, vehicles, mixed = (schema(name) for name in INGESTION)
    assert meters.is_valid(meter(0)) and meters.is_valid([meter(0), meter(1)])
    assert vehicles.is_valid(vehicle(0)) and vehicles.is_valid([vehicle(0)])
    assert mixed.is_valid([meter(0), vehicle(0)]) and mixed.is_valid(vehicle(1))
    assert not meters.is_valid([vehicle(0)]) and not meters.is_valid([])
    assert not meters.is_valid({**meter(0), "extra": 1})
    assert not meters.is_valid({**meter(0), "kwhConsumedAc": -0.1})
    assert not vehicles.is_valid({**vehicle(0), "soc": 100.5})
    assert not mixed.is_valid([{**meter(0), "vehicleId": "EV-1"}])


def test_the_error_body_is_documented(document: dict) -> None:
    schemas = document["components"]["schemas"]
    body = schemas["ErrorBody"]
    assert set(body["properties"]) == {"error", "message", "errors"} and set(body["required"]) == {"error", "message"}
    assert {"items": {"$ref": "#/components/schemas/ErrorDetail"}, "type": "array"} in body["properties"]["errors"]["oneOf"]
    assert set(schemas["ErrorDetail"]["properties"]) == {"index", "field", "reason", "source", "key", "message"}


def test_every_protected_operation_documents_its_errors_with_the_error_body(document: dict) -> None:
    checked = protected(document)
    assert TAKE_INPUT <= set(checked)
    for name, operation in checked.items():
        responses = operation["responses"]
        assert {"401", "403", "503"} <= set(responses), name
        # Litestar documents a 400 of its own body for operations with parameters; the server answers
        # invalid input 422 with the error body, never 400 (ErrorDocumentedOperation drops it).
        assert "400" not in responses, name
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert response["content"]["application/json"]["schema"] == {"$ref": ERROR_BODY}, (name, status)
    for name in TAKE_INPUT:
        assert "422" in checked[name]["responses"], name
    for name in INGESTION:
        assert {"413", "415"} <= set(checked[name]["responses"]), name
    assert "404" in checked["DELETE /v1/keys/{key_id}"]["responses"]
    assert "404" in checked["GET /v1/analytics/performance/{vehicle_id}"]["responses"]
    for name in ALERTS - {"GET /v1/alerts"} | WEBHOOKS - {"POST /v1/webhooks"}:
        assert "404" in checked[name]["responses"], name


def test_readiness_documents_its_503(document: dict) -> None:
    responses = operations(document)["GET /health/ready"]["responses"]
    assert responses["503"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/NotReady"}
    assert set(document["components"]["schemas"]["NotReady"]["properties"]) == {"status", "reason", "problems"}


def test_error_answers_are_what_the_document_says(client: TestClient, keys: Keys, document: dict) -> None:
    error_body = validator(document, {"$ref": ERROR_BODY}, closed=True)
    bad_reading = [meter(0), {**meter(1), "kwhConsumedAc": -1}]
    answers = {
        "no key": (client.get("/v1/keys"), 401),
        "wrong scope": (post(client, "/v1/telemetry/meters", [meter(0)], keys.read), 403),
        "unknown key id": (client.delete("/v1/keys/0123456789ab", headers=Keys.header(keys.admin)), 404),
        "unknown vehicle": (client.get("/v1/analytics/performance/EV-NONE", headers=Keys.header(keys.read)), 404),
        "content type": (post(client, "/v1/telemetry/meters", [meter(0)], keys.ingest, "text/plain"), 415),
        "bad reading": (post(client, "/v1/telemetry/meters", bad_reading, keys.ingest), 422),
        "bad csv": (post(client, "/v1/telemetry/meters", "\r0", keys.ingest, "text/csv"), 422),
        "bad parameter": (client.get("/v1/analytics/fleet?worst=-1", headers=Keys.header(keys.read)), 422),
        "bad window": (client.get("/v1/analytics/fleet?from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z",
                                  headers=Keys.header(keys.read)), 422),
        "truncated json": (post(client, "/v1/keys", '{"scopes": ["read"]', keys.admin), 422),
    }
    for what, (response, status) in answers.items():
        assert response.status_code == status, (what, response.text)
        body = response.json()
        assert error_body.is_valid(body), (what, body)
    assert answers["bad reading"][0].json()["errors"] == [
        {"index": 1, "field": "kwhConsumedAc", "reason": "Expected `float` >= 0.0"}]
    assert answers["bad parameter"][0].json()["errors"][0]["source"] == "query"


def test_the_interactive_page_loads_without_a_key_and_offers_the_bearer_scheme(client: TestClient,
                                                                               document: dict) -> None:
    for path in ("/schema", "/schema/swagger"):
        page = client.get(path)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "SwaggerUIBundle(" in page.text
        embedded = json.loads(re.search(r"spec: (\{.*\}),\s*dom_id", page.text, re.DOTALL)[1])
        assert embedded == document  # with it the bearer scheme: Swagger's "Authorize" button
