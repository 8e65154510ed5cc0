"""Prescribed programs taken by the device (issue 20), the applier on a real store: each program of a
signed desired state applied or refused on its own, with its reason, in the clinician's order; the
document's profile applied whatever becomes of its programs; a list that cannot be a prescription
refuses the whole document; background files fetched from a real HTTPS server requiring the
device's certificate; the set kept sealed, replaced whole, and reviewed again when the engine
changes or a file that could not be had can be."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from device_peer import ServerKey, device_settings
from fleet import PASSPHRASE

from resonera.common.prescription import (
    PRESCRIPTION_SCHEMA,
    BackgroundFile,
    EngineCapabilities,
    content_path,
    definition_sha256,
    prescribe,
)
from resonera.common.profile import HearingProfile
from resonera.common.program import Program, builtin_program, parse_program
from resonera.device.backgrounds import BackgroundCache, BackgroundFetcher, ClientFiles
from resonera.device.desired_state import REPORTED_CAPABILITIES, DesiredStateApplier
from resonera.device.prescriptions import (
    NotPrescribed,
    choose_program,
    find_assigned,
    review_programs,
)
from resonera.device.session import play_standalone
from resonera.device.store import DeviceStore
from resonera.engine.audio.sinks import NullSink
from resonera.server.fleet_ca import FleetCA
from resonera.stack.fleet_identity import issue_device

DEVICE = "rx-device"
RAIN = b"RIFF rain, as far as this test cares " * 100
RAIN_SHA = hashlib.sha256(RAIN).hexdigest()


def short(name: str, seconds: float = 2.0, *, background: str | None = None) -> Program:
    layers: list[dict[str, Any]] = [{"type": "tone", "frequency_hz": 432.0, "gain": 0.2}]
    if background is not None:
        layers.append({"type": "background", "path": content_path(background), "gain": 0.1})
    return parse_program(
        {
            "name": name,
            "fade_in_s": 0.2,
            "fade_out_s": 0.2,
            "steps": [{"duration_s": seconds, "layers": layers}],
        },
        "test",
    )


def entry(library_id: str, program: Program, version: int = 1, **files: int) -> dict[str, Any]:
    backgrounds = [BackgroundFile(sha256=sha, size=size) for sha, size in files.items()]
    return prescribe(library_id, version, program, backgrounds).model_dump(mode="json")


def with_rain(library_id: str, name: str) -> dict[str, Any]:
    return entry(library_id, short(name, background=RAIN_SHA), **{RAIN_SHA: len(RAIN)})


def tampered(library_id: str, name: str) -> dict[str, Any]:
    sent = entry(library_id, short(name))
    sent["definition"]["steps"][0]["layers"][0]["gain"] = 0.9  # altered after it was hashed
    return sent


def unknown_layer(library_id: str, name: str) -> dict[str, Any]:
    definition = short(name).model_dump(mode="json")
    definition["steps"][0]["layers"].append({"type": "granular", "gain": 0.1, "grain_ms": 30})
    sent = entry(library_id, short(name))
    return {**sent, "definition": definition, "sha256": definition_sha256(definition)}


def reports(store: DeviceStore) -> list[dict[str, Any]]:
    return [
        json.loads(m.payload)["body"] for m in store.pending(limit=1000) if m.kind == "reported"
    ]


@pytest.fixture
def server_key() -> ServerKey:
    return ServerKey()


def applier_for(
    tmp_path: Path, server_key: ServerKey, fetcher: BackgroundFetcher | None = None
) -> tuple[DesiredStateApplier, DeviceStore]:
    settings = device_settings(None, tmp_path, DEVICE, server_public_key=server_key.public_b64)
    store = settings.open_store()
    cache = fetcher.cache if fetcher is not None else BackgroundCache(tmp_path / "backgrounds")
    applier = DesiredStateApplier(
        store,
        DEVICE,
        settings.pinned_server_key(),
        settings.profile,
        backgrounds=cache,
        fetcher=fetcher,
    )
    return applier, store


def https_fetcher(
    tmp_path: Path, background_server: Callable[[FleetCA], Any]
) -> tuple[BackgroundFetcher, Any]:
    ca = FleetCA.init(tmp_path / "ca", PASSPHRASE)
    server = background_server(ca)
    device = issue_device(ca, PASSPHRASE, DEVICE, tmp_path / "identity")
    files = ClientFiles(device.cert_file, device.key_file)
    cache = BackgroundCache(tmp_path / "data" / "backgrounds")
    return BackgroundFetcher(cache, server.api_url, lambda: files, server.ca_file), server


def test_each_program_is_applied_or_refused_with_its_reason_in_the_clinicians_order(
    tmp_path: Path, server_key: ServerKey, background_server: Callable[[FleetCA], Any]
) -> None:
    fetcher, server = https_fetcher(tmp_path, background_server)
    server.serve(RAIN_SHA, RAIN)
    missing = hashlib.sha256(b"never uploaded").hexdigest()
    applier, store = applier_for(tmp_path, server_key, fetcher)
    programs = [
        entry("lib-alpha", short("Short alpha")),
        tampered("lib-tampered", "Tampered"),
        entry("lib-long", short("Too long", seconds=61 * 60.0)),  # the limits: 60 minutes
        unknown_layer("lib-granular", "Granular"),
        with_rain("lib-rain", "Rain"),
        entry("lib-gone", short("Gone", background=missing), **{missing: 1000}),
        entry("lib-theta", short("Short theta"), version=3),
    ]
    result = applier.handle(server_key.payload(DEVICE, 1, programs=programs))
    assert result.outcome == "applied"  # the profile holds whatever became of the programs
    [report] = reports(store)
    assert (report["desired_version"], report["status"]) == (1, "applied")
    outcomes = [(p["library_id"], p["version"], p["status"]) for p in report["programs"]]
    assert outcomes == [
        ("lib-alpha", 1, "applied"),
        ("lib-tampered", 1, "refused"),
        ("lib-long", 1, "refused"),
        ("lib-granular", 1, "refused"),
        ("lib-rain", 1, "applied"),
        ("lib-gone", 1, "refused"),
        ("lib-theta", 3, "applied"),
    ]
    reasons = {p["library_id"]: p["reason"] for p in report["programs"]}
    assert (
        "'Tampered' (library lib-tampered v1): the definition's SHA-256" in reasons["lib-tampered"]
    )
    assert "at most 3600 s" in reasons["lib-long"]
    assert "granular" in reasons["lib-granular"]
    assert "the server has no such file (404" in reasons["lib-gone"]
    assert reasons["lib-alpha"] == ""
    assert [p["sha256"] for p in report["programs"]] == [p["sha256"] for p in programs]
    capabilities = EngineCapabilities.model_validate(report["capabilities"])
    assert capabilities.backgrounds == (RAIN_SHA,) and capabilities.fetches_backgrounds
    assert PRESCRIPTION_SCHEMA in capabilities.program_schemas
    assigned = store.assigned_programs()
    assert [(p.position, p.name) for p in assigned] == [
        (0, "Short alpha"),
        (4, "Rain"),
        (6, "Short theta"),
    ]
    assert find_assigned(assigned, "short ALPHA").library_id == "lib-alpha"
    assert find_assigned(assigned, "lib-theta").version == 3
    with pytest.raises(NotPrescribed, match="'Short alpha', 'Rain', 'Short theta'"):
        find_assigned(assigned, "demo-alpha")
    assert assigned[0].program().digest() == programs[0]["sha256"]
    assert (fetcher.cache.directory / RAIN_SHA).read_bytes() == RAIN
    assert store.meta(REPORTED_CAPABILITIES) is not None


@pytest.mark.parametrize(
    ("programs", "complaint"),
    [
        ({"name": "calm-tone"}, "programs must be a list"),
        (["calm-tone"], r"programs\[0\]: .*does not name its library id"),
        ([{"name": "calm-tone"}], r"programs\[0\]"),
        ("twice", "is prescribed twice"),
        ("same-name", "share a name"),
        ("too-many", "at most 20 programs"),
    ],
)
def test_a_list_that_cannot_be_a_prescription_refuses_the_whole_document(
    tmp_path: Path, server_key: ServerKey, programs: Any, complaint: str
) -> None:
    applier, store = applier_for(tmp_path, server_key)
    one = entry("lib-a", short("A"))
    if programs == "twice":
        programs = [one, entry("lib-a", short("A again"))]
    elif programs == "same-name":
        programs = [one, entry("lib-b", short("a"))]
    elif programs == "too-many":
        programs = [entry(f"lib-{i}", short(f"P{i}")) for i in range(21)]
    result = applier.handle(server_key.payload(DEVICE, 1, programs=programs))
    assert result.outcome == "refused"
    [report] = reports(store)
    assert report["status"] == "refused" and "programs" not in report
    assert re.search(complaint, report["reason"]), report["reason"]
    assert store.applied_desired() is None and store.assigned_programs() == []


def test_a_malformed_entry_that_names_itself_is_refused_alone(
    tmp_path: Path, server_key: ServerKey
) -> None:
    applier, store = applier_for(tmp_path, server_key)
    broken = {**entry("lib-b", short("B")), "schema_version": 0}
    applier.handle(server_key.payload(DEVICE, 1, programs=[entry("lib-a", short("A")), broken]))
    [report] = reports(store)
    assert [p["status"] for p in report["programs"]] == ["applied", "refused"]
    assert "programs[1]" in report["programs"][1]["reason"]


def test_a_newer_document_replaces_the_set_whole_and_sealed(
    tmp_path: Path, server_key: ServerKey
) -> None:
    applier, store = applier_for(tmp_path, server_key)
    applier.handle(server_key.payload(DEVICE, 1, programs=[entry("lib-a", short("Secret alpha"))]))
    applier.handle(server_key.payload(DEVICE, 2, programs=[entry("lib-b", short("Beta"), 2)]))
    assert [(p.library_id, p.version) for p in store.assigned_programs()] == [("lib-b", 2)]
    store.close()
    raw = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("device.db*"))
    assert b"Beta" not in raw and b"Secret alpha" not in raw  # sealed at rest
    reopened = DeviceStore(tmp_path / "data" / "device.db")
    assert [p.name for p in reopened.assigned_programs()] == ["Beta"]


def test_a_deferred_document_brings_its_programs_when_the_session_ends(
    tmp_path: Path, server_key: ServerKey
) -> None:
    applier, store = applier_for(tmp_path, server_key)
    applier.handle(server_key.payload(DEVICE, 1, programs=[entry("lib-a", short("A"))]))
    applier.session_started()
    raised = server_key.payload(
        DEVICE,
        2,
        limits={"max_level_dba": 80.0, "max_session_minutes": 60},
        programs=[entry("lib-b", short("B"))],
    )
    assert applier.handle(raised).outcome == "deferred"
    assert [p.name for p in store.assigned_programs()] == ["A"]  # in force until the end
    ended = applier.session_ended()
    assert ended is not None and ended.version == 2
    assert [p.name for p in store.assigned_programs()] == ["B"]
    statuses = [(r["status"], [p["library_id"] for p in r["programs"]]) for r in reports(store)]
    assert statuses == [("applied", ["lib-a"]), ("deferred", ["lib-b"]), ("applied", ["lib-b"])]


def test_without_a_way_to_fetch_a_program_needing_a_file_is_refused_by_the_capabilities(
    tmp_path: Path, server_key: ServerKey
) -> None:
    applier, store = applier_for(tmp_path, server_key)  # no server, no certificate
    applier.handle(server_key.payload(DEVICE, 1, programs=[with_rain("lib-rain", "Rain")]))
    [report] = reports(store)
    [program] = report["programs"]
    assert program["status"] == "refused"
    assert "cannot fetch" in program["reason"]
    assert report["capabilities"]["fetches_backgrounds"] is False


def test_the_review_names_what_an_engine_lacks() -> None:
    old_engine = EngineCapabilities(
        engine_version="old",
        program_schemas=(PRESCRIPTION_SCHEMA,),
        layer_types=("tone",),
        sample_rates=(48000,),
    )
    content = {"programs": [with_rain("lib-rain", "Rain"), entry("lib-tone", short("Tone"))]}
    verdicts = review_programs(content, HearingProfile(), old_engine)
    assert [v.passed for v in verdicts] == [False, True]
    assert "engine old plays tone" in verdicts[0].reason


def test_an_engine_change_or_a_file_that_can_be_had_now_is_reviewed_and_reported_again(
    tmp_path: Path, server_key: ServerKey, background_server: Callable[[FleetCA], Any]
) -> None:
    fetcher, server = https_fetcher(tmp_path, background_server)
    applier, store = applier_for(tmp_path, server_key, fetcher)
    first = applier.reassess()  # a new device: its engine told before anything is prescribed
    assert first is not None and first.version == 0
    assert applier.reassess() is None  # the same engine: nothing to say
    payload = server_key.payload(DEVICE, 1, programs=[with_rain("lib-rain", "Rain")])
    applier.handle(payload)  # the file is not on the server yet
    assert store.assigned_programs() == []
    assert applier.reassess() is None  # still out of reach: nothing new to say
    server.serve(RAIN_SHA, RAIN)
    assert applier.handle(payload).outcome == "unchanged"  # the retained copy, after a reconnect
    assert [p.name for p in store.assigned_programs()] == ["Rain"]
    store.set_meta(REPORTED_CAPABILITIES, "{}")  # as if another engine had reported
    again = applier.reassess()
    assert again is not None and again.version == 1
    statuses = [
        (r["desired_version"], [p["status"] for p in r["programs"]]) for r in reports(store)
    ]
    assert statuses == [(0, []), (1, ["refused"]), (1, ["applied"]), (1, ["applied"])]


def test_an_old_store_with_no_programs_kept_is_reviewed_at_the_next_start(
    tmp_path: Path, server_key: ServerKey
) -> None:
    applier, store = applier_for(tmp_path, server_key)
    document = server_key.document(DEVICE, 4, programs=[entry("lib-a", short("A"))])
    content = {k: v for k, v in copy.deepcopy(document).items() if k != "sig"}
    store.save_desired(4, content, HearingProfile(), "applied")  # as a release before kept it
    assert store.assigned_programs() == []
    store.set_meta(REPORTED_CAPABILITIES, json.dumps(applier.capabilities().model_dump()))
    result = applier.reassess()
    assert result is not None and result.version == 4
    assert [p.name for p in store.assigned_programs()] == ["A"]


def test_play_chooses_among_the_prescribed_and_the_record_names_the_version(
    tmp_path: Path, server_key: ServerKey
) -> None:
    applier, store = applier_for(tmp_path, server_key)
    settings = device_settings(None, tmp_path, DEVICE, server_public_key=server_key.public_b64)
    forbidden = HearingProfile(builtin_when_unassigned=False)
    with pytest.raises(NotPrescribed, match="does not allow the built-in programs"):
        choose_program([], forbidden, "demo-alpha", builtin_program)
    assert choose_program([], HearingProfile(), "calm-tone", builtin_program)[1] is None
    sent = entry("lib-theta", short("Short theta"), version=4)
    applier.handle(server_key.payload(DEVICE, 1, programs=[sent]))
    with pytest.raises(NotPrescribed, match="not among the programs prescribed here: 'Short"):
        choose_program(store.assigned_programs(), forbidden, "LIB-theta", builtin_program)
    program, chosen = choose_program(
        store.assigned_programs(), forbidden, "short theta", builtin_program
    )
    assert chosen is not None
    record = play_standalone(settings, store, program, NullSink(), prescribed=chosen)
    assert (record.program_library_id, record.program_version) == ("lib-theta", 4)
    assert record.program_digest == sent["sha256"] and record.outcome == "completed"
    [queued] = [json.loads(m.payload)["body"] for m in store.pending() if m.kind == "session"]
    assert (queued["program_library_id"], queued["program_version"]) == ("lib-theta", 4)
