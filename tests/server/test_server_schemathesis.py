"""Schemathesis against the OpenAPI schema, on SQLite and PostgreSQL: generated requests for every
operation, with the token of the role the operation is for (and, for half of the examples, a real
patient id), must never get a 5xx, an undocumented status, or a body that breaks the schema.

Its own strategies reach what schemathesis leaves out (issue 26, finding 3): ``date-time`` values
at the ends of the calendar with any offset (``0001-01-01T00:00:00+14:00`` has no UTC equivalent),
and, in half of the examples, a lone surrogate (``"\\ud800"``, which schemathesis never generates)
put into one of the JSON body's strings.

Bounded: a few examples per operation (``MAX_EXAMPLES``), so the suite stays well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.formats import unregister_string_format

MAX_EXAMPLES = 8
#: Times that parse and have no UTC equivalent, and the calendar's ends in UTC (which do).
EXTREME_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-23:00",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-01:00",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z",
]
#: Offsets at the ends of what ISO 8601 allows, and an ordinary one.
OFFSETS = [UTC, timezone(timedelta(hours=14)), timezone(-timedelta(hours=23, minutes=59))]
DATE_TIMES = st.one_of(
    st.sampled_from(EXTREME_TIMES),
    st.datetimes(
        min_value=datetime.min, max_value=datetime.max, timezones=st.sampled_from(OFFSETS)
    ).map(datetime.isoformat),
)
LONE_SURROGATES = st.sampled_from(["\ud800", "\udfff", "a\udc00b", "\udbff\udbff"])
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


def _strings(value: Any) -> list[tuple[Any, Any]]:
    """(container, key or index) of every string in a JSON value, depth first."""
    found: list[tuple[Any, Any]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for key, item in items:
        if isinstance(item, str):
            found.append((value, key))
        elif isinstance(item, dict | list):
            found += _strings(item)
    return found


def _poison(body: Any, surrogate: str, pick: int) -> None:
    """Put ``surrogate`` into the middle of one of ``body``'s strings (when it has any)."""
    if not isinstance(body, dict | list):
        return
    strings = _strings(body)
    if strings:
        container, key = strings[pick % len(strings)]
        text = container[key]
        container[key] = text[: len(text) // 2] + surrogate + text[len(text) // 2 :]


@pytest.fixture
def extreme_date_times() -> Iterator[None]:
    """Every ``date-time`` schemathesis generates is drawn from ``DATE_TIMES`` meanwhile."""
    schemathesis.openapi.format("date-time", DATE_TIMES)
    yield
    unregister_string_format("date-time")


@pytest.mark.usefixtures("extreme_date_times")
def test_api_conforms_to_its_schema(app: FastAPI, world: Any) -> None:
    """Every operation, a few generated cases each; all failures reported together."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=world.admin.headers)
    failures: list[str] = []
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the OpenAPI schema has invalid operations"
    assert len(operations) >= 30

    def check(operation: Any) -> None:
        actor = _actor_for(operation.path, world)

        @given(
            case=operation.as_strategy(),
            surrogate=st.none() | LONE_SURROGATES,
            pick=st.integers(min_value=0, max_value=50),
        )
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any, surrogate: str | None, pick: int) -> None:
            if surrogate is not None:
                _poison(case.body, surrogate, pick)
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
