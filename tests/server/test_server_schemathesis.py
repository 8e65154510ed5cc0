"""Schemathesis against the OpenAPI schema, on SQLite and PostgreSQL: generated requests for every
operation, with the token of the role the operation is for (and, for half of the examples, a real
patient id), must never get a 5xx, an undocumented status, or a body that breaks the schema.

Bounded: a few examples per operation (``MAX_EXAMPLES``), so the suite stays well under a minute.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

MAX_EXAMPLES = 8
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _actor_for(path: str, world: Any) -> Any:
    if path.startswith(("/api/v1/users", "/api/v1/devices", "/api/v1/assignments")):
        return world.admin
    if path.startswith("/api/v1/audit"):
        return world.auditor
    if "/clinicians" in path:
        return world.admin
    return world.clinician


def test_api_conforms_to_its_schema(app: FastAPI, world: Any) -> None:
    """Every operation, a few generated cases each; all failures reported together."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the OpenAPI schema has invalid operations"
    assert len(operations) >= 30

    def check(operation: Any) -> None:
        actor = _actor_for(operation.path, world)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            params = case.path_parameters or {}
            if "patient_id" in params and len(str(params["patient_id"])) % 2 == 0:
                params["patient_id"] = world.patient
            if "device_id" in params and len(str(params["device_id"])) % 2 == 0:
                params["device_id"] = world.device
            case.call_and_validate(headers=actor.headers, checks=CHECKS)

        run()

    for operation in operations:
        try:
            check(operation)
        except Exception as exc:  # collect, so one run shows every broken operation
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert not failures, "\n\n".join(failures)
