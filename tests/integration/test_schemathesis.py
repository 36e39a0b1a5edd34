"""Property-based fuzzing of the running service from its own OpenAPI schema (schemathesis).

Every operation gets generated requests, valid and invalid; the service must never answer 5xx,
and documented responses must match their schema. (schemathesis' pytest plugin does not load under
pytest 9, so operations are driven through hypothesis directly.)
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error, response_schema_conformance
from schemathesis.generation import GenerationMode

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="session")
def operations(serve_url: str) -> list[Any]:
    schema = schemathesis.openapi.from_url(f"{serve_url}/openapi.json")
    ops = [result.ok() for result in schema.get_all_operations()]
    assert len(ops) >= 5
    return ops


def _label(op: Any) -> str:
    return f"{op.method.upper()} {op.path}"


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_errors_and_schema_conformance(operations: list[Any], mode: GenerationMode) -> None:
    failures: list[str] = []
    tested_negative_skip: list[str] = []
    for op in operations:

        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=op.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            response = case.call(timeout=60)
            case.validate_response(response, checks=[not_a_server_error, response_schema_conformance])

        try:
            run()
        except Unsatisfiable:
            # No invalid request exists for this operation (no parameters, or any string is valid).
            tested_negative_skip.append(_label(op))
        except Exception as exc:  # collect every operation's failure, then report them together
            failures.append(f"{_label(op)}: {str(exc)[:600]}")
    assert not failures, "\n".join(failures)
    assert len(tested_negative_skip) < len(operations)
