"""The prescription editor on the patient page (issue 20, item 1): programs added from the library
search, reordered, removed and saved as one signed desired-state version through the API's own
service; a stale save, a program refused under the patient's limits, pending until the device
reports it applied (through ingest, as the device sends it), a newer library version one click
away; plain forms (no JavaScript needed), in Chromium at desk and phone widths."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html import unescape
from typing import Any

import httpx
from dashboard.helpers import (
    PASSWORD,
    Browsing,
    Seeded,
    create_program,
    form_token,
    html_client,
    seed_world,
    sign_in_as,
)
from factories import ALPHA_TOML
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import Browser, expect
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from resonera.common import topics
from resonera.common.envelope import Envelope
from resonera.engine.capabilities import engine_capabilities
from resonera.server.crypto import FieldCipher
from resonera.server.desired import MemoryPublisher
from resonera.server.ingest import IngestProcessor, Received
from resonera.server.models import DeviceDesiredRow, PatientConfigRow, UserRow
from resonera.server.programs import create_program as add_to_library
from resonera.server.runner import ServerProcess

SignIn = Callable[[str], str]

TONE_TOML = """\
name = "Calm tone"
description = "a steady evening tone"

[[steps]]
duration_s = 60
[[steps.layers]]
type = "tone"
frequency_hz = 220
gain = 0.2
"""
PINK_TOML = """\
name = "Pink rest"
description = "two minutes of pink noise"

[[steps]]
duration_s = 120
[[steps.layers]]
type = "noise"
colour = "pink"
gain = 0.1
"""
_FORM = re.compile(r'<form id="prescription-form".*?</form>', re.S)
_HIDDEN = re.compile(r'<input type="hidden" name="(\w+)" value="([^"]*)">')
_ROW = re.compile(
    r'<li class="prescribed-program" data-library-id="[^"]*" data-state="(\w+)">(.*?)</li>', re.S
)


# -- reading and posting the editor as a browser without JavaScript does ------------------------


def editor_form(html: str) -> dict[str, Any]:
    """The editor form's fields as the page holds them (``program`` a list, in order)."""
    found = _FORM.search(html)
    assert found, "the page has no prescription editor"
    form: dict[str, Any] = {"program": []}
    for name, value in _HIDDEN.findall(found.group(0)):
        if name == "program":
            form["program"].append(value)
        else:
            form[name] = value
    weekly = re.search(r'name="sessions_per_week"[^>]*value="([^"]*)"', found.group(0))
    assert weekly
    form["sessions_per_week"] = weekly.group(1)
    return form


def rows(html: str) -> list[tuple[str, str]]:
    """Each prescribed program's name (with its version) and the state line shown for it."""

    def text(part: str) -> str:
        return " ".join(re.sub(r"<[^>]+>", " ", part).split())

    out = []
    for _state, body in _ROW.findall(html):
        name = re.search(r'<p class="name">(.*?)</p>', body, re.S)
        state = re.search(r'<p class="state[^"]*">(.*?)</p>', body, re.S)
        assert name and state
        out.append((text(name.group(1)).split(" · ")[0], text(state.group(1))))
    return out


def matches(html: str) -> list[str]:
    """The names the library search lists."""
    if 'id="library-matches"' not in html:
        return []
    listed = html.split('id="library-matches"', 1)[1].split("</ul>", 1)[0]
    return re.findall(r'<p class="name"><strong>([^<]+)</strong>', listed)


def press(client: TestClient, patient: str, html: str, action: str, **changes: Any) -> Any:
    """Press one of the editor's buttons on the page ``html`` (the form as it stands)."""
    form = {**editor_form(html), **changes, "action": action}
    return client.post(f"/patients/{patient}/prescription", data=form)


def follow(client: TestClient, response: httpx.Response) -> str:
    assert response.status_code == 303, response.text
    page = client.get(response.headers["location"])
    assert page.status_code == 200, page.text
    html: str = page.text
    return html


def configs(engine: Engine, patient: str) -> list[PatientConfigRow]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(PatientConfigRow)
                .where(PatientConfigRow.patient_id == patient)
                .order_by(col(PatientConfigRow.version))
            )
        )


def report(
    engine: Engine, device: str, seq: int, programs: list[tuple[dict[str, Any], str]]
) -> None:
    """The device reports the desired state it holds applied, each program as given."""
    with Session(engine) as session:
        desired = session.get(DeviceDesiredRow, device)
        assert desired is not None
        version = desired.version
    body = {
        "desired_version": version,
        "status": "applied",
        "programs": [
            {
                "library_id": entry["library_id"],
                "version": entry["version"],
                "sha256": entry["sha256"],
                "status": "refused" if reason else "applied",
                "reason": reason,
            }
            for entry, reason in programs
        ],
        "capabilities": engine_capabilities().model_dump(mode="json"),
    }
    envelope = Envelope.create(device=device, seq=seq, kind="reported", body=body)
    result = IngestProcessor(engine).process(
        [Received(topics.up(device, "reported"), envelope.to_bytes())]
    )
    assert result.stored == 1, result


def walk_the_editor(
    client: TestClient, seeded: Seeded, engine: Engine, csrf: str
) -> list[dict[str, Any]]:
    """Add three programs from the search, move the last up, remove the first, set the weekly
    sessions and save; the saved entries."""
    alpha = create_program(client, csrf, ALPHA_TOML)
    create_program(client, csrf, TONE_TOML)
    create_program(client, csrf, PINK_TOML, tags="Sleep, tinnitus")
    url = f"/patients/{seeded.patient}"
    html = client.get(url).text
    assert "Nothing has been prescribed yet." in html

    search = client.get(f"{url}?q=EVENING").text  # any case, in the description
    assert matches(search) == ["Calm tone"]
    search = client.get(f"{url}?q=Tinnitus").text  # and in the tags, each match showing its own
    assert matches(search) == ["Pink rest"]
    assert '<p class="tags">Tags: sleep, tinnitus</p>' in search
    assert "Programs have no tags yet" not in search
    html = client.get(f"{url}?q=").text  # empty: the whole library
    added = matches(html)
    assert added == ["Alpha drift", "Calm tone", "Pink rest"]
    ids = dict(zip(added, re.findall(r'value="add:([0-9a-f-]+)"', html), strict=True))
    assert ids["Alpha drift"] == alpha

    for name in ("Alpha drift", "Calm tone", "Pink rest"):
        html = follow(client, press(client, seeded.patient, html, f"add:{ids[name]}"))
        assert "Changes not saved yet." in html
        assert f'aria-label="Add &#39;{name}&#39;' not in html  # added: not offered again
    assert 'id="library-matches"' in html  # the search stays open while adding
    assert [name for name, _ in rows(html)] == ["Alpha drift v1", "Calm tone v1", "Pink rest v1"]
    assert {state for _, state in rows(html)} == {"+ Not saved yet"}
    html = follow(client, press(client, seeded.patient, html, "up:2"))
    assert [name for name, _ in rows(html)] == ["Alpha drift v1", "Pink rest v1", "Calm tone v1"]
    html = follow(client, press(client, seeded.patient, html, "remove:0"))
    assert [name for name, _ in rows(html)] == ["Pink rest v1", "Calm tone v1"]
    assert configs(engine, seeded.patient) == []  # nothing stored while editing

    saved = press(client, seeded.patient, html, "save", sessions_per_week="4")
    assert saved.headers["location"] == f"{url}?saved=1#prescription"
    html = follow(client, saved)
    assert "Saved as version 1." in html and "Prescribed in version 1" in html
    assert rows(html) == [
        ("Pink rest v1", "… Pending: waiting for the device to report it applied"),
        ("Calm tone v1", "… Pending: waiting for the device to report it applied"),
    ]
    assert editor_form(html)["sessions_per_week"] == "4"
    [config] = configs(engine, seeded.patient)
    assert [p["name"] for p in config.programs] == ["Pink rest", "Calm tone"]
    assert config.sessions_per_week == 4
    return list(config.programs)


def test_add_reorder_remove_and_save(
    client: TestClient,
    sign_in: SignIn,
    seeded: Seeded,
    engine: Engine,
    publisher: MemoryPublisher,
) -> None:
    entries = walk_the_editor(client, seeded, engine, sign_in(seeded.clinician))
    # signed and published like the API's PUT, the full entries in the clinician's order
    document = json.loads(publisher.documents[seeded.device])
    assert document["programs"] == entries
    assert document["sessions_per_week"] == 4 and document["sig"]["value"]
    assert document["patient_config_version"] == 1


def test_the_editor_works_on_postgresql(
    pg_app: FastAPI, pg_engine: Engine, cipher: FieldCipher
) -> None:
    seeded = seed_world(pg_engine, cipher, days=3)
    with html_client(pg_app) as client:
        landing = client.get(sign_in_as(client, seeded.clinician))
        walk_the_editor(client, seeded, pg_engine, form_token(landing.text))


def test_pending_until_the_device_reports_each_program(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    entries = walk_the_editor(client, seeded, engine, sign_in(seeded.clinician))
    url = f"/patients/{seeded.patient}"
    report(engine, seeded.device, 10**6, [(entries[0], ""), (entries[1], "")])
    assert rows(client.get(url).text) == [
        ("Pink rest v1", "✓ Applied on the device"),
        ("Calm tone v1", "✓ Applied on the device"),
    ]
    # a later report refusing one: the device's reason is shown next to it
    report(
        engine,
        seeded.device,
        10**6 + 1,
        [(entries[0], "pink noise is not allowed here"), (entries[1], "")],
    )
    assert rows(client.get(url).text) == [
        ("Pink rest v1", "✗ Refused: device dev-a: pink noise is not allowed here"),
        ("Calm tone v1", "✓ Applied on the device"),
    ]


def _set_limits(client: TestClient, patient: str, html: str, **limits: str) -> str:
    fields = dict(
        re.findall(r'<input id="(\w+)" name="\w+" type="number"[^>]*value="([^"]*)"', html)
    )
    version = re.search(
        r'<form method="post" action="[^"]*/limits".*?name="version" value="(\d+)"', html, re.S
    )
    assert version
    data = {**fields, **limits, "profile": "{}", "version": version.group(1)}
    data["csrf_token"] = form_token(html)
    return follow(client, client.post(f"/patients/{patient}/limits", data=data))


def test_a_program_refused_under_the_patients_limits_shows_why(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    csrf = sign_in(seeded.clinician)
    alpha = create_program(client, csrf, ALPHA_TOML)
    url = f"/patients/{seeded.patient}"
    html = _set_limits(client, seeded.patient, client.get(url).text, max_session_minutes="5")
    search = client.get(f"{url}?q=alpha").text
    assert "Cannot play for Ada Lovelace:" in search  # said before it is even added
    html = follow(client, press(client, seeded.patient, search, f"add:{alpha}"))
    refused = press(client, seeded.patient, html, "save")
    assert refused.status_code == 422
    why = "this person's sessions may last at most 300 s"
    assert "The prescription was not saved:" in refused.text
    row = _ROW.search(refused.text)
    assert row and "Cannot be prescribed:" in row.group(2) and why in unescape(row.group(2))
    assert rows(refused.text)[0][0] == "Alpha drift v1"  # the draft as it was, to change it
    assert [c.programs for c in configs(engine, seeded.patient)] == [[]]  # nothing half-saved


def test_a_stale_save_says_so_and_shows_the_current_state(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    csrf = sign_in(seeded.clinician)
    alpha = create_program(client, csrf, ALPHA_TOML)
    tone = create_program(client, csrf, TONE_TOML)
    url = f"/patients/{seeded.patient}"
    mine = follow(client, press(client, seeded.patient, client.get(url).text, f"add:{alpha}"))
    # meanwhile, in another tab: the tone saved as version 1
    theirs = follow(client, press(client, seeded.patient, client.get(url).text, f"add:{tone}"))
    assert press(client, seeded.patient, theirs, "save").status_code == 303
    stale = press(client, seeded.patient, mine, "save")
    assert stale.status_code == 409
    assert "someone else saved this patient&#39;s settings meanwhile (now version 1)" in stale.text
    assert rows(stale.text) == [
        ("Calm tone v1", "… Pending: waiting for the device to report it applied")
    ]
    assert editor_form(stale.text)["version"] == "1"  # a save from here is not stale
    assert [len(c.programs) for c in configs(engine, seeded.patient)] == [1]


def test_a_newer_library_version_is_one_click_away(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    csrf = sign_in(seeded.clinician)
    alpha = create_program(client, csrf, ALPHA_TOML)
    url = f"/patients/{seeded.patient}"
    html = follow(client, press(client, seeded.patient, client.get(url).text, f"add:{alpha}"))
    html = follow(client, press(client, seeded.patient, html, "save"))
    assert "A newer version exists" not in html
    edited = client.post(
        f"/programs/{alpha}",
        data={
            "document": ALPHA_TOML.replace("beat_hz = 10", "beat_hz = 8"),
            "format": "toml",
            "version": "1",
            "csrf_token": csrf,
        },
    )
    assert edited.status_code == 303
    html = client.get(url).text
    assert "A newer version exists (v2)." in html
    assert rows(html)[0][0] == "Alpha drift v1"  # the patient keeps version 1 until moved on
    assert "aria-label=\"Move Ada Lovelace to version 2 of 'Alpha drift' and save\"" in html
    html = follow(client, press(client, seeded.patient, html, "newer:0"))
    assert "Saved as version 2." in html and "A newer version exists" not in html
    assert rows(html)[0][0] == "Alpha drift v2"
    assert [[p["version"] for p in c.programs] for c in configs(engine, seeded.patient)] == [
        [1],
        [2],
    ]


def test_bad_input_is_a_clear_page_never_a_500(
    client: TestClient, sign_in: SignIn, seeded: Seeded, engine: Engine
) -> None:
    csrf = sign_in(seeded.clinician)
    alpha = create_program(client, csrf, ALPHA_TOML)
    url = f"/patients/{seeded.patient}"
    html = client.get(url).text
    for changes, message in (
        ({"action": "explode"}, "is not something the prescription editor does"),
        ({"action": "up:7"}, "the prescription has no program 8"),
        ({"action": "add:" + "0" * 36}, "no library program has this id"),
        ({"action": "add:NOT-AN-ID"}, "is not a library program id"),
        (
            {"program": ["nonsense"]},
            "does not name a program as &lt;library id&gt;:&lt;version&gt;",
        ),
    ):
        form = {**editor_form(html), "action": "save", **changes}
        response = client.post(f"{url}/prescription", data=form)
        assert response.status_code == 400, (changes, response.text[:300])
        assert message in response.text, changes
    page = client.get(f"{url}?draft=1&program={alpha}:x")
    assert page.status_code == 400 and "The prescription sent is not valid" in page.text
    unknown = press(client, seeded.patient, html, "save", program=["0" * 8 + ":1"])
    assert unknown.status_code == 422 and "no library program has this id" in unknown.text
    weekly = press(client, seeded.patient, html, "save", sessions_per_week="99")
    assert weekly.status_code == 400 and "sessions per week:" in weekly.text
    assert press(client, seeded.patient, html, "save", csrf_token="").status_code == 403
    other = client.post(
        f"/patients/{seeded.other_patient}/prescription",
        data={**editor_form(html), "action": f"add:{alpha}"},
    )
    assert other.status_code == 403
    assert configs(engine, seeded.patient) == [] == configs(engine, seeded.other_patient)
    nothing = client.get(f"{url}?q=zzz").text
    assert "No library program matches “zzz”." in nothing


# -- in Chromium --------------------------------------------------------------------------------


def _library(engine: Engine, email: str, *documents: str) -> list[str]:
    with Session(engine) as session:
        user = session.exec(select(UserRow.id).where(UserRow.email == email)).one()
        assert user is not None
        return [
            add_to_library(session, actor_user_id=user, document=d, fmt="toml").id
            for d in documents
        ]


def test_the_editor_in_chromium_at_desk_and_phone_widths(
    browsing: Browsing, seeded: Seeded, engine: Engine, publisher: MemoryPublisher
) -> None:
    _library(engine, seeded.clinician, ALPHA_TOML, TONE_TOML, PINK_TOML)
    b = browsing
    page = b.page
    b.sign_in(seeded.clinician)
    b.goto(f"/patients/{seeded.patient}#prescription")
    expect(page.locator("#prescription-status")).to_contain_text("Nothing has been prescribed")
    page.get_by_label("Name, description or tag").fill("")
    page.get_by_role("button", name="Search the library").click()
    for name in ("Alpha drift", "Calm tone", "Pink rest"):
        page.get_by_role("button", name=f"Add '{name}' to the prescription").click()
    page.get_by_role("button", name="Move 'Pink rest' up").click()
    page.get_by_role("button", name="Remove 'Calm tone'").click()
    page.get_by_label("Sessions per week prescribed").fill("5")
    items = page.locator("#prescribed-programs > li")
    expect(items).to_have_count(2)
    expect(items.nth(1)).to_contain_text("Pink rest")
    b.shot("draft-1280")
    b.shot_of("#prescription", "draft-1280-prescription")
    page.get_by_role("button", name="Save prescription as version 1").click()
    expect(page.locator(".notice")).to_have_text("Saved as version 1.")
    expect(items.nth(0)).to_contain_text("Pending")
    entries = json.loads(publisher.documents[seeded.device])["programs"]
    report(engine, seeded.device, 10**6, [(entries[0], ""), (entries[1], "needs a file")])
    page.reload()
    expect(items.nth(0)).to_contain_text("Applied on the device")
    expect(items.nth(1)).to_contain_text("Refused: device dev-a: needs a file")
    b.shot("saved-1280")
    b.shot_of("#prescription", "saved-1280-prescription")
    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    page.locator("#prescription").scroll_into_view_if_needed()
    b.shot("saved-390")
    b.shot_of("#prescription", "saved-390-prescription")
    page.get_by_label("Name, description or tag").fill("evening")
    page.get_by_role("button", name="Search the library").click()
    expect(page.locator("#library-matches > li")).to_have_count(1)
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    b.shot("search-390")
    b.shot_of("#prescription", "search-390-prescription")
    assert b.console_errors == []


def test_the_editor_needs_no_javascript(
    browser: Browser, live_server: ServerProcess, seeded: Seeded, engine: Engine
) -> None:
    [alpha] = _library(engine, seeded.clinician, ALPHA_TOML)
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(live_server.url + "/login")
        page.get_by_label("Email").fill(seeded.clinician)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.goto(f"{live_server.url}/patients/{seeded.patient}?q=alpha")
        page.get_by_role("button", name="Add 'Alpha drift' to the prescription").click()
        expect(page.locator("#prescription-status")).to_contain_text("Changes not saved yet.")
        page.get_by_label("Sessions per week prescribed").fill("2")
        page.get_by_label("Sessions per week prescribed").press("Enter")  # the default: save
        expect(page.locator(".notice")).to_have_text("Saved as version 1.")
    finally:
        context.close()
    [config] = configs(engine, seeded.patient)
    assert [p["library_id"] for p in config.programs] == [alpha]
    assert config.sessions_per_week == 2
