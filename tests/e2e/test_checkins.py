"""A check-in from the clinician's question to the server's ``checkin`` table, every hop real:
REST API (the patient's profile with a question) → signed desired state retained on mosquitto →
device service (the question spoken into the prompt cache with espeak-ng) → the buttons answer it
before and after a session (the "after" one skipped: why reaches the server too) → sealed in the
device store, queued → mosquitto → server ingest. A redelivery of the same messages adds nothing:
each answer is stored once."""

from __future__ import annotations

import sqlite3
from importlib.resources import files
from pathlib import Path

from clinic import clinic, signing_key
from device_peer import Peer, device_settings
from factories import press
from support import Mosquitto, require_tool, wait_until

from resonera.common import serial_link as sl
from resonera.common import topics
from resonera.common.profile import CheckInQuestion
from resonera.device.cli import resolve_program
from resonera.device.controls import SKIPPED_BY_PERSON
from resonera.device.prompts import build_prompts, prompts_dir
from resonera.device.service import DeviceService
from resonera.engine.audio.calibration import load_calibration_file, packaged_calibration

DEVICE = "e2e-checkin-1"
PROGRAM = "calm-tone"
QUESTION = {
    "id": "distress",
    "text": "How distressing is your tinnitus now?",
    "low_label": "not at all",
    "high_label": "unbearable",
    "better": "lower",
}

DISTRESS = CheckInQuestion.model_validate(QUESTION)


def test_check_ins_answered_on_the_device_reach_the_server_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    require_tool("espeak-ng")
    key_file, server_public_key = signing_key(tmp_path)
    device = device_settings(mosquitto, tmp_path, DEVICE, server_public_key=server_public_key)
    # no MCU (simulation): the null sink plays without consent, as the flag says
    build_prompts(
        prompts_dir(device.data_dir),
        load_calibration_file(packaged_calibration()),
        sample_rate=device.sample_rate,
        keys=["checkin_before", "checkin_after", "checkin_how", "checkin_done", "n5", "n6", "n8"],
    )
    peer = Peer(mosquitto, ack=False)  # sees what the device sends, to send it again
    service: DeviceService | None = None
    with clinic(mosquitto, tmp_path, DEVICE, key_file) as site:
        api = site.api
        # the program, added to the library and prescribed by its id, as the clinician does
        document = files("resonera.common").joinpath(f"program-{PROGRAM}.toml").read_text()
        added = api.post(f"{site.server.api_url}/programs", json={"document": document})
        assert added.status_code == 201, added.text
        etag = api.get("/desired").headers.get("ETag", '"0"')
        put = api.put(
            "/desired",
            json={
                "profile": {"checkins": [QUESTION]},
                "programs": [{"library_id": added.json()["id"]}],
            },
            headers={"If-Match": etag},
        )
        assert put.status_code == 200, put.text

        def rows() -> list[tuple[str, str, int | None, bool, str | None, str]]:
            with sqlite3.connect(site.database) as db:
                return list(
                    db.execute(
                        "SELECT record_id, phase, value, skipped, skip_reason, patient_id "
                        "FROM checkin ORDER BY answered_at"
                    )
                )

        try:
            service = DeviceService(device, resolve_program)
            service.start()
            panel = service.panel

            def asking(phase: str) -> bool:
                return panel.controls.checkin is not None and panel.controls.checkin.phase == phase

            wait_until(
                lambda: (
                    panel.library is not None
                    and panel.library.has(panel.library.question_key(DISTRESS))
                ),
                60,
                "the question spoken into the cache",
            )
            # the buttons, as the safety monitor hands their presses to the panel
            panel.on_press(press(sl.BUTTON_PLAY_PAUSE))
            wait_until(lambda: asking("before"), 30, "the 'before' question")
            panel.on_press(press(sl.BUTTON_VOLUME_UP))
            panel.on_press(press(sl.BUTTON_PLAY_PAUSE))  # 6
            wait_until(lambda: service.status()["playing"] == PROGRAM, 30, "the program")
            panel.on_press(press(sl.BUTTON_STOP))
            wait_until(lambda: asking("after"), 30, "the 'after' question")
            panel.on_press(press(sl.BUTTON_STOP))  # the person declines to answer
            wait_until(lambda: len(rows()) == 2, 30, "the answers at the server")
        finally:
            if service is not None:
                service.close()

        store = device.open_store()
        [session] = store.sessions()
        first = rows()
        assert [
            (phase, value, bool(skipped), why) for _, phase, value, skipped, why, _ in first
        ] == [
            ("before", 6, False, None),
            ("after", None, True, SKIPPED_BY_PERSON),
        ]
        assert {patient for *_, patient in first} == {site.patient_id}
        with sqlite3.connect(site.database) as db:
            sessions = {s for (s,) in db.execute("SELECT DISTINCT session_id FROM checkin")}
        assert sessions == {session.session_id}

        # the same messages delivered again (a lost acknowledgement): nothing more is stored
        sent = peer.of_kind("checkin")
        assert len(sent) == 2
        for envelope in sent:
            info = peer.client.publish(topics.up(DEVICE, "checkin"), envelope.to_bytes(), qos=1)
            info.wait_for_publish(timeout=5)
        # a message after them, from the same client: once it is in, they were handled
        marker_envelope = store.queue_message(DEVICE, "metrics", {"telemetry": {}})
        store.close()
        info = peer.client.publish(topics.up(DEVICE, "metrics"), marker_envelope.to_bytes(), qos=1)
        info.wait_for_publish(timeout=5)

        def has_marker() -> bool:
            with sqlite3.connect(site.database) as db:
                found = db.execute(
                    "SELECT 1 FROM device_message WHERE message_id = ?", (marker_envelope.id,)
                ).fetchone()
            return found is not None

        wait_until(has_marker, 30, "the message after the redelivery")
        assert rows() == first
    peer.close()
