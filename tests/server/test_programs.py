"""The program library API: create, read, edit with ETag/If-Match, the device's validation, roles,
audit, and handing a library program to a patient through the desired state."""

from __future__ import annotations

import json
from typing import Any

import pytest
from factories import ALPHA_TOML as ALPHA
from fastapi.testclient import TestClient
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from resonera.common.errors import VersionConflict
from resonera.common.prescription import definition_sha256
from resonera.common.program import parse_program
from resonera.server import programs
from resonera.server.desired import MemoryPublisher
from resonera.server.models import AuditRow, ProgramLibraryRow

API = "/api/v1"

ALPHA_YAML = """\
name: Theta steps
steps:
  - duration_s: 60
    layers:
      - {type: binaural, carrier_hz: 180, beat_hz: 6, gain: 0.25}
  - duration_s: 60
    layers:
      - {type: noise, colour: pink, gain: 0.1}
"""


def _create(
    client: TestClient, headers: dict[str, str], document: str = ALPHA, fmt: str = "toml"
) -> Any:
    return client.post(
        f"{API}/programs", json={"document": document, "format": fmt}, headers=headers
    )


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


def _audit(engine: Engine, resource: str) -> list[AuditRow]:
    with Session(engine) as session:
        return list(session.exec(select(AuditRow).where(AuditRow.resource == resource)))


def test_create_read_list_and_edit_with_etags(
    client: TestClient, world: Any, engine: Engine
) -> None:
    created = _create(client, world.clinician.headers)
    assert created.status_code == 201, created.text
    body = created.json()
    assert (body["name"], body["version"], created.headers["etag"]) == ("Alpha drift", 1, '"1"')
    assert body["duration_s"] == 600
    assert body["program"]["steps"][0]["layers"][0]["beat_hz"] == 10
    url = f"{API}/programs/{body['id']}"
    assert created.headers["location"] == url

    got = client.get(url, headers=world.auditor.headers)
    assert got.status_code == 200 and got.headers["etag"] == '"1"'
    assert got.json()["document"] == ALPHA
    listed = client.get(f"{API}/programs", headers=world.other_clinician.headers).json()
    assert [p["name"] for p in listed] == ["Alpha drift"]

    edited = ALPHA.replace("beat_hz = 10", "beat_hz = 9")
    _error(client.put(url, json={"document": edited}, headers=world.clinician.headers), 428)
    put = client.put(
        url, json={"document": edited}, headers={**world.admin.headers, "If-Match": '"1"'}
    )
    assert put.status_code == 200, put.text
    assert (put.json()["version"], put.headers["etag"]) == (2, '"2"')
    assert put.json()["content_hash"] != body["content_hash"]
    assert put.json()["updated_by"] == world.admin.id

    # Someone who edited version 1 meanwhile loses, with what the version is now.
    stale = client.put(
        url, json={"document": ALPHA}, headers={**world.clinician.headers, "If-Match": '"1"'}
    )
    assert _error(stale, 412)["details"] == {"current_version": 2}
    assert stale.headers["etag"] == '"2"'
    _error(
        client.put(
            url, json={"document": ALPHA}, headers={**world.clinician.headers, "If-Match": "*x"}
        ),
        412,
    )
    assert (
        client.get(url, headers=world.clinician.headers).json()["program"]["steps"][0]["layers"][0][
            "beat_hz"
        ]
        == 9
    )

    actions = sorted((a.action, a.actor_id) for a in _audit(engine, "program"))
    assert actions == [("create", world.clinician.id), ("update", world.admin.id)]

    # Every version is kept, readable by number, with its author and its definition's hash.
    versions = client.get(f"{url}/versions", headers=world.auditor.headers).json()
    assert [(v["version"], v["created_by"]) for v in versions] == [
        (1, world.clinician.id),
        (2, world.admin.id),
    ]
    assert versions[0]["sha256"] == body["content_hash"]
    assert versions[1]["sha256"] == put.json()["content_hash"]
    first = client.get(f"{url}/versions/1", headers=world.clinician.headers).json()
    assert first["document"] == ALPHA and first["definition"] == body["program"]
    assert first["sha256"] == definition_sha256(first["definition"])
    missing = _error(client.get(f"{url}/versions/3", headers=world.clinician.headers), 404)
    assert "no version 3" in missing["message"]


def test_yaml_programs_are_the_same_model(client: TestClient, world: Any) -> None:
    created = _create(client, world.clinician.headers, ALPHA_YAML, "yaml")
    assert created.status_code == 201, created.text
    assert created.json()["format"] == "yaml"
    assert created.json()["duration_s"] == 120
    assert created.json()["program"]["steps"][1]["layers"][0]["type"] == "noise"


@pytest.mark.parametrize(
    ("document", "fmt", "field", "words"),
    [
        (ALPHA.replace("beat_hz = 10", "beat_hz = 99"), "toml", "steps.0.layers.0", "beat_hz"),
        (
            ALPHA.replace("gain = 0.3", "gain = 0.3\nvolume = 2"),
            "toml",
            "steps.0.layers.0",
            "volume",
        ),
        ('name = "x"\n[[steps]\n', "toml", "document", "line 2"),
        (ALPHA_YAML.replace("gain: 0.1}", "gain: 0.1"), "yaml", "document", "line"),
        ("a: &x [1]\nb: *x\n", "yaml", "document", "aliases"),
        (
            ALPHA.replace("duration_s = 600", "duration_s = 6000")
            + ALPHA[ALPHA.index("[[steps]]") :].replace("600", "6000"),
            "toml",
            "document",
            "at most",
        ),
        (
            ALPHA.replace('type = "binaural"', 'type = "background"\npath = "/etc/passwd"').replace(
                "carrier_hz = 200\nbeat_hz = 10\n", ""
            ),
            "toml",
            "steps.0.layers.0.path",
            "background",
        ),
    ],
    ids=[
        "out-of-range",
        "unknown-field",
        "toml-syntax",
        "yaml-syntax",
        "yaml-alias",
        "too-long",
        "file",
    ],
)
def test_invalid_documents_name_the_field_or_line_and_store_nothing(
    *,
    client: TestClient,
    world: Any,
    engine: Engine,
    document: str,
    fmt: str,
    field: str,
    words: str,
) -> None:
    error = _error(_create(client, world.clinician.headers, document, fmt), 422)
    assert error["details"]["field"].startswith(field), error
    assert words in error["message"], error
    with Session(engine) as session:
        assert session.exec(select(ProgramLibraryRow)).first() is None
    assert _audit(engine, "program") == []


def test_names_are_unique(client: TestClient, world: Any) -> None:
    assert _create(client, world.clinician.headers).status_code == 201
    error = _error(_create(client, world.other_clinician.headers), 409)
    assert error["details"]["field"] == "name"
    other = _create(client, world.clinician.headers, ALPHA_YAML, "yaml").json()
    taken = client.put(
        f"{API}/programs/{other['id']}",
        json={"document": ALPHA},
        headers={**world.clinician.headers, "If-Match": '"1"'},
    )
    _error(taken, 409)


def test_roles(client: TestClient, world: Any) -> None:
    _error(_create(client, world.auditor.headers), 403)
    _error(client.get(f"{API}/programs"), 401)
    created = _create(client, world.admin.headers).json()
    url = f"{API}/programs/{created['id']}"
    _error(
        client.put(
            url, json={"document": ALPHA}, headers={**world.auditor.headers, "If-Match": '"1"'}
        ),
        403,
    )
    _error(client.get(f"{API}/programs/0123-abcd", headers=world.auditor.headers), 404)
    _error(client.get(f"{API}/programs/NOT_AN_ID", headers=world.auditor.headers), 422)


def test_concurrent_edits_of_one_version_let_exactly_one_win(
    client: TestClient, world: Any, engine: Engine
) -> None:
    row_id = _create(client, world.clinician.headers).json()["id"]
    with Session(engine) as first, Session(engine) as second:
        # Both read version 1 before either writes.
        assert programs.get_program(first, row_id) is not None
        assert programs.get_program(second, row_id) is not None
        programs.update_program(
            first,
            row_id,
            actor_user_id=world.clinician.id,
            document=ALPHA.replace("200", "210"),
            fmt="toml",
            expected_version=1,
        )
        with pytest.raises(VersionConflict) as lost:
            programs.update_program(
                second,
                row_id,
                actor_user_id=world.admin.id,
                document=ALPHA.replace("200", "220"),
                fmt="toml",
                expected_version=1,
            )
    assert lost.value.current == 2
    got = client.get(f"{API}/programs/{row_id}", headers=world.clinician.headers).json()
    assert got["program"]["steps"][0]["layers"][0]["carrier_hz"] == 210


def test_a_library_program_goes_to_a_patient_through_the_desired_state(
    client: TestClient, world: Any, publisher: MemoryPublisher
) -> None:
    created = _create(client, world.clinician.headers).json()
    put = client.put(
        f"{API}/patients/{world.patient}/desired",
        json={"programs": [{"library_id": created["id"]}]},
        headers={**world.clinician.headers, "If-Match": '"0"'},
    )
    assert put.status_code == 200, put.text
    document = json.loads(publisher.documents[world.device])
    entry = document["programs"][0]
    assert (entry["name"], entry["library_id"], entry["version"]) == (
        "Alpha drift",
        created["id"],
        1,
    )
    # The device parses it with the same model it came from.
    assert parse_program(entry["definition"]).steps[0].layers[0].type == "binaural"


def _tag_put(client: TestClient, url: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    etag = client.get(url, headers=headers).headers["etag"]
    return client.put(url, json=body, headers={**headers, "If-Match": etag})


def test_tags_are_normalised_filtered_and_change_no_version(
    client: TestClient, world: Any, engine: Engine
) -> None:
    created = client.post(
        f"{API}/programs",
        json={"document": ALPHA, "tags": ["  Sleep ", "tinnitus  relief", "SLEEP", "sömn-hjälp"]},
        headers=world.clinician.headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["tags"] == ["sleep", "tinnitus relief", "sömn-hjälp"]
    url = f"{API}/programs/{created.json()['id']}"
    theta = _create(client, world.clinician.headers, ALPHA_YAML, "yaml").json()
    assert theta["tags"] == []  # optional on POST

    def names(query: str) -> list[str]:
        listed = client.get(f"{API}/programs{query}", headers=world.auditor.headers)
        assert listed.status_code == 200, listed.text
        return [p["name"] for p in listed.json()]

    assert names("") == ["Alpha drift", "Theta steps"]
    assert names("?tag=SLEEP") == names("?tag=tinnitus%20relief") == ["Alpha drift"]
    assert names("?tag=sle") == []  # a tag matches exactly
    assert names("?q=RELIEF") == ["Alpha drift"]  # the text query reads tags ...
    assert names("?q=theta") == ["Theta steps"]  # ... names ...
    assert names("?q=ten%20minutes") == ["Alpha drift"]  # ... and descriptions
    assert names("?tag=sleep&q=theta") == []  # both must hold
    assert names("?q=") == ["Alpha drift", "Theta steps"]

    # Same document, other tags: the tags change in place, no version, audited as such.
    retagged = _tag_put(
        client, url, {"document": ALPHA, "tags": ["Evening"]}, world.clinician.headers
    )
    assert retagged.status_code == 200, retagged.text
    assert (retagged.json()["tags"], retagged.json()["version"]) == (["evening"], 1)
    assert retagged.headers["etag"] == '"1"'
    assert [
        v["version"] for v in client.get(f"{url}/versions", headers=world.auditor.headers).json()
    ] == [1]
    # A PUT without tags keeps them, also when it makes a new version.
    edited = ALPHA.replace("beat_hz = 10", "beat_hz = 9")
    put = _tag_put(client, url, {"document": edited}, world.admin.headers)
    assert (put.json()["tags"], put.json()["version"]) == (["evening"], 2)
    # Nothing changed: nothing saved, nothing audited.
    same = _tag_put(client, url, {"document": edited}, world.admin.headers)
    assert same.json()["version"] == 2
    actions = [a.action for a in _audit(engine, "program") if a.resource_id == put.json()["id"]]
    assert sorted(actions) == ["create", "update", "update_tags"]
    with Session(engine) as session:
        row = session.get(ProgramLibraryRow, put.json()["id"])
        assert row is not None and row.tags == ["evening"]


@pytest.mark.parametrize(
    ("tags", "says"),
    [
        (["sleep", "bad!"], "tag 'bad!' may hold only letters, digits, spaces and hyphens"),
        (["snake_case"], "tag 'snake_case' may hold only"),
        (["x" * 33], f"tag '{'x' * 33}' is longer than 32 characters"),
        (["  "], "a tag is empty"),
        ([f"t{n}" for n in range(11)], "at most 10 tags, not 11"),
        (["a"] * 50 + ["b"], None),  # duplicates count once: accepted
    ],
)
def test_bad_tags_are_a_422_naming_the_tag(
    client: TestClient, world: Any, tags: list[str], says: str | None
) -> None:
    response = client.post(
        f"{API}/programs", json={"document": ALPHA, "tags": tags}, headers=world.clinician.headers
    )
    if says is None:
        assert response.status_code == 201 and response.json()["tags"] == ["a", "b"]
        return
    error = _error(response, 422)
    assert error["details"]["field"] == "tags" and says in error["message"]
    assert client.get(f"{API}/programs", headers=world.clinician.headers).json() == []


def test_bad_tags_on_put_store_nothing(client: TestClient, world: Any) -> None:
    created = _create(client, world.clinician.headers).json()
    url = f"{API}/programs/{created['id']}"
    refused = _tag_put(client, url, {"document": ALPHA, "tags": ["ok", "<b>"]}, world.admin.headers)
    assert "tag '<b>'" in _error(refused, 422)["message"]
    huge = _tag_put(client, url, {"document": ALPHA, "tags": ["x" * 201]}, world.admin.headers)
    _error(huge, 422)  # hostile sizes stop at the schema, still a 422
    assert client.get(url, headers=world.admin.headers).json()["tags"] == []
    # A filter longer than any tag is refused, not searched.
    _error(client.get(f"{API}/programs?tag={'x' * 65}", headers=world.admin.headers), 422)


def test_a_tags_only_change_loses_to_a_newer_version(
    client: TestClient, world: Any, engine: Engine
) -> None:
    row_id = _create(client, world.clinician.headers).json()["id"]
    with Session(engine) as first, Session(engine) as second:
        assert programs.get_program(second, row_id) is not None  # read at version 1
        programs.update_program(
            first,
            row_id,
            actor_user_id=world.clinician.id,
            document=ALPHA.replace("200", "210"),
            fmt="toml",
            expected_version=1,
        )
        with pytest.raises(VersionConflict):
            programs.update_program(
                second,
                row_id,
                actor_user_id=world.admin.id,
                document=ALPHA,
                fmt="toml",
                expected_version=1,
                tags=["late"],
            )
    assert client.get(f"{API}/programs/{row_id}", headers=world.admin.headers).json()["tags"] == []
