"""Property-based fuzzing of every endpoint from the OpenAPI spec, over real HTTP: no 5xx, ever."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
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


@pytest.fixture(scope="module")
def api_schema(service):
    return schemathesis.openapi.from_url(f"{service.url}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_endpoint_answers_5xx(case, service):
    token = service.device["agent_token"] if case.path.startswith("/v1/agent") else service.admin_token
    case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
    response = case.call(base_url=service.url, timeout=60)
    case.validate_response(response, checks=(not_a_server_error,))
    if 400 <= response.status_code < 500 and response.headers.get("content-type", "").startswith("application/json"):
        assert "detail" in response.json()  # every refusal says what was wrong
