"""Schemathesis against the real Ray Serve app (one app per module).

Every operation gets generated requests (valid and invalid; examples, coverage and fuzzing
phases), sent with an admin key so every endpoint is reachable, over 2,000 in all. Checks: no
5xx, and every status, content type, header and body is the one the schema declares (the
error bodies are `{"error": ...}`). A failure prints the request.

The cases are generated from `make_api().openapi()` at collection time (the app is not up then;
schemathesis' lazy `from_fixture` loader does not run under pytest 9: it sets
`Function._nodeid`), and `test_the_app_serves_this_schema` checks that the running app's
/openapi.json is exactly that schema.
"""

from collections import Counter, defaultdict

import pytest
import requests
import schemathesis
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from service_config import (
    ADMIN,
    free_port,
    ray_temp_dir,
    set_test_keys,
    write_serve_config,
)

from recstack.serving import serve_cmd
from recstack.serving.api import make_api

pytestmark = pytest.mark.integration
# fuzzing examples per operation (the coverage phase adds its own few): small operations run
# out of distinct inputs sooner, and the run sends about 2,800 requests in all (~40 s)
MAX_EXAMPLES = 300
MIN_REQUESTS = 2_000
CHECKS = [  # no 5xx; every status, content type, header and body as the schema declares
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
OPENAPI = make_api().openapi()
STATUSES: dict[str, Counter] = defaultdict(Counter)  # operation -> status -> responses

schema = schemathesis.openapi.from_dict(OPENAPI, config=schemathesis.Config())
schema.config.update(headers=ADMIN, request_timeout=30)
schema.config.generation.update(max_examples=MAX_EXAMPLES, database="none")


@pytest.fixture(scope="module")
def service(tmp_path_factory, ml100k_artifacts) -> str:
    root = tmp_path_factory.mktemp("st")
    set_test_keys()
    config = write_serve_config(root / "serve.yaml", ml100k_artifacts, root / "state", free_port())
    url = serve_cmd.start(config, temp_dir=ray_temp_dir())
    try:
        yield url
    finally:
        serve_cmd.stop()


def test_the_app_serves_this_schema(service):
    assert requests.get(f"{service}/openapi.json", timeout=30).json() == OPENAPI


@schemathesis.check
def error_bodies_are_documented(ctx, response, case) -> None:
    """Every error answer is the API's `{"error": "..."}` body, whatever its status."""
    if response.status_code >= 400 and case.method.upper() != "HEAD":
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body


@schema.parametrize()
def test_no_server_errors_and_responses_match_the_schema(case, service):
    response = case.call_and_validate(
        base_url=service, headers=ADMIN, checks=[*CHECKS, error_bodies_are_documented]
    )
    STATUSES[case.operation.label][response.status_code] += 1


# Answers that come from past validation: random ids are not in the catalogue (similar), random
# dirs are not artifacts (admin models: the artifact check ran and refused them).
REAL_REFUSALS = {(404, "/v1/similar/{item_id}"), (400, "/v1/admin/models")}


def test_generated_requests_got_past_validation_everywhere():
    """Each operation answered some generated request for real (not only 4xx rejections)."""
    if not STATUSES:
        pytest.skip("needs the generated tests above in the same run")
    sent = sum(sum(counts.values()) for counts in STATUSES.values())
    print(f"schemathesis sent {sent} requests")
    assert sent >= MIN_REQUESTS, sent
    missed = {
        label: dict(counts)
        for label, counts in STATUSES.items()
        if not any(s < 300 or (s, label.split()[-1]) in REAL_REFUSALS for s in counts)
    }
    assert not missed and len(STATUSES) == len(list(schema.get_all_operations())), missed
