"""A bounded fuzz of the API from its own OpenAPI document (schemathesis): whatever a client sends to any operation,
the answer is never a 5xx, and every refusal is one line in ``detail``. The app runs in process (ASGI) against
the session's real redis-server and moto S3; no worker is needed, since no generated job ever has to run."""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.services import s3_settings
from worker.api.app import create_app

TOKEN = "fuzz-token-" + "7" * 24
EXAMPLES_PER_OPERATION = 25  # ~15 operations: a few hundred requests, a few seconds


@pytest.fixture(name="api_schema")
def api_schema_fixture(redis_server, s3_server, tmp_path):  # noqa: F811
    s3_server.make_bucket("inbox")
    # A token limited to S3 prefixes: a generated spec naming a folder (say "/" as a collection) is refused before
    # anything walks the disk, while specs inside the prefixes go all the way to the queue.
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tokens": [{"name": "fuzz", "token": TOKEN, "inputs": ["s3://inbox/"],
                                              "outputs": ["s3://inbox/results/"]}]}))
    config = s3_settings(s3_server, redis_url=redis_server.url, api_tokens_file=tokens, api_inbox="s3://inbox/",
                         api_results="s3://inbox/results/", api_max_upload_bytes=4096, work_dir=tmp_path / "work",
                         cache_dir=tmp_path / "cache")
    return schemathesis.openapi.from_asgi("/api/v1/openapi.json", create_app(config))


def test_no_operation_answers_with_a_server_error(api_schema):
    # Driven by hand rather than through schemathesis' pytest plugin, which does not run under this pytest.
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def check(case) -> None:
                response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
                where = f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:200]}"
                assert response.status_code < 500, f"{where}: {response.status_code} {response.text}"
                if 400 <= response.status_code < 500 and response.status_code != 405:
                    detail = response.json()["detail"]
                    assert isinstance(detail, str) and "\n" not in detail, f"{where}: {detail}"

            try:
                check()
            except Unsatisfiable:  # an operation with nothing to get wrong (no parameters, no body)
                assert mode is GenerationMode.NEGATIVE, operation.path
