"""Hostile input at scale: schemathesis generates requests for every operation of the app's own
OpenAPI document and sends them to the real server with no key, a read-only key and a full key. No
request may get a 5xx, and a rejected request leaves no row behind."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fix_api import Keys, count_rows


@pytest.mark.slow
def test_no_operation_answers_5xx_and_rejections_write_nothing(live_server_factory, keys: Keys, conn) -> None:
    server = live_server_factory()
    schema = schemathesis.openapi.from_dict(httpx.get(f"{server.url}/schema/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10  # every operation of the API, not a subset
    statuses: Counter = Counter()
    operations_hit: set[str] = set()

    # Each operation on its own, so that every one gets its share of examples.
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(case=st.data())
    def fuzz_one(operation, case) -> None:
        case = case.draw(operation.as_strategy())
        for headers in ({}, Keys.header(keys.read), Keys.header(keys.all)):
            before = count_rows(conn)
            response = case.call(base_url=server.url, headers={**(case.headers or {}), **headers}, timeout=30)
            statuses[response.status_code] += 1
            operations_hit.add(f"{case.method} {case.path}")
            assert response.status_code < 500, (case.method, case.formatted_path, response.status_code,
                                                response.text[:300])
            if response.status_code >= 400 and case.path not in ("/metrics",):
                assert response.json()["error"]  # a JSON error naming the problem
                assert count_rows(conn) == before

    for operation in operations:
        fuzz_one(operation)
    print(f"schemathesis: {sum(statuses.values())} requests over {len(operations_hit)} operations: "
          f"{dict(sorted(statuses.items()))}")
    assert len(operations_hit) == len(operations)
