"""Schemathesis fuzzes every operation of the API's published OpenAPI schema against the real app and Redis.

Whatever the generated body, path or query, the API must answer without a 5xx (503 only when Redis
is down, which it is not here). No worker runs: PREDICT_WAIT_S is 0, so /predict answers at once with
pending items or a clear 4xx. (Schemathesis' pytest plugin does not load under pytest 9, so each
operation's strategy is driven by hypothesis directly.)
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings

from backend.service.app import create_app
from tests.test_api import make_settings

EXAMPLES = 40


def test_no_operation_answers_5xx(redis_url):
    app = create_app(make_settings(redis_url, predict_wait_s=0))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {f"{op.method.upper()} {op.path}" for op in operations}
    assert {"POST /predict", "POST /setup", "POST /webhook", "GET /health", "GET /jobs/{ident}"} <= paths
    calls: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case):
            response = case.call()
            calls.append(f"{case.method} {case.path} {response.status_code}")
            assert response.status_code < 500, f"{case.method} {case.path} -> {response.status_code}: {response.text}"

        fuzz()
    assert len(calls) >= len(operations) * 5
    assert app.state.settings.queue_prefix  # the app served every call from its own key prefix
