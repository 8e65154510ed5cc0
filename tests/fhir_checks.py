"""FHIR R4 checks for the export tests: HL7's R4 JSON schema (vendored with the server) and the
required code bindings the schema leaves to a full validator."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]

from resonera.server.export import fhir

#: R4 value sets with a required binding, for the elements we fill in.
REQUIRED_CODES: dict[str, dict[str, set[str]]] = {
    "Device": {"status": {"active", "inactive", "entered-in-error", "unknown"}},
    "Procedure": {
        "status": {
            "preparation",
            "in-progress",
            "not-done",
            "on-hold",
            "stopped",
            "completed",
            "entered-in-error",
            "unknown",
        }
    },
    "Observation": {
        "status": {
            "registered",
            "preliminary",
            "final",
            "amended",
            "corrected",
            "cancelled",
            "entered-in-error",
            "unknown",
        }
    },
    "AdverseEvent": {"actuality": {"actual", "potential"}},
    "AuditEvent": {"action": {"C", "R", "U", "D", "E"}, "outcome": {"0", "4", "8", "12"}},
}
SCHEMA = Path(fhir.__file__).parent / "schemas" / "fhir.schema.json"


@cache
def _validator() -> Any:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    return jsonschema.Draft6Validator(schema)


def check_fhir(document: dict[str, Any]) -> None:
    """Valid R4: the whole bundle, and each resource against its own definition (clearer errors)."""
    validator = _validator()
    errors = [e.message for e in validator.iter_errors(document)]
    for entry in document.get("entry", []):
        kind = entry["resource"]["resourceType"]
        one = validator.evolve(schema={**validator.schema, "$ref": f"#/definitions/{kind}"})
        errors += [
            f"{kind}: {e.json_path}: {e.message}" for e in one.iter_errors(entry["resource"])
        ]
    assert errors == [], errors
    # The JSON schema leaves required code bindings to the validator proper: check ours here.
    for entry in document.get("entry", []):
        resource = entry["resource"]
        for name, allowed in REQUIRED_CODES.get(resource["resourceType"], {}).items():
            assert resource[name] in allowed, (resource["resourceType"], name, resource[name])
