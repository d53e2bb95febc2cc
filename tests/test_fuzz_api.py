"""Property-based fuzzing of every endpoint from the OpenAPI spec, over real HTTP: no 5xx, ever.

Driven through Hypothesis directly (schemathesis's pytest plugin does not support pytest 9 yet).
"""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.service_harness import register, running_service, start_run


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz")
    with running_service(f"sqlite:///{work / 'fuzz.db'}", work, DNAS_SERVICE_LONG_POLL_SECONDS="0") as svc:
        with svc.client() as admin:
            svc.device = register(admin, "fuzz-target")  # ids 1.. exist, so paths reach real rows
            start_run(admin, svc.device["id"])
        yield svc


def test_no_endpoint_answers_5xx(service):
    schema = schemathesis.openapi.from_url(f"{service.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    seen: dict[str, int] = {}

    def fuzz(operation) -> None:  # one Hypothesis run per endpoint
        token = service.device["agent_token"] if operation.path.startswith("/v1/agent") else service.admin_token

        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def check(case):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
            response = case.call(base_url=service.url, timeout=60)
            case.validate_response(response, checks=(not_a_server_error,))
            if 400 <= response.status_code < 500 and "json" in response.headers.get("content-type", ""):
                assert "detail" in response.json()  # every refusal says what was wrong
            seen[operation.label] = seen.get(operation.label, 0) + 1

        check()

    for operation in operations:
        fuzz(operation)
    assert len(seen) == len(operations)  # every endpoint was exercised
