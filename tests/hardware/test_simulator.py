"""The simulator on a real pty, spoken to with plain pyserial and the codec; and resonera-hwsim."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from support import wait_until

from resonera.common import serial_link as sl
from resonera.hardware.scenario import execute
from resonera.hardware.sim import Simulator

HWSIM = str(Path(sys.executable).with_name("resonera-hwsim"))


class Peer:
    """A minimal device: pyserial, the codec, and a list of what arrived."""

    def __init__(self, path: str) -> None:
        self.port = serial.serial_for_url(path, baudrate=115200, timeout=0)
        self.port.reset_input_buffer()
        self.decoder = sl.FrameDecoder(synced=False)
        self.received: list[sl.Frame | sl.FrameError] = []
        self.seq = 0

    def poll(self) -> list[sl.Frame | sl.FrameError]:
        self.received += self.decoder.feed(self.port.read(4096))
        return self.received

    def send(self, msg_type: int, body: bytes = b"") -> None:
        self.port.write(sl.encode_frame(msg_type, self.seq, body))
        self.seq += 1

    def frames(self, msg_type: int) -> list[sl.Frame]:
        return [e for e in self.poll() if isinstance(e, sl.Frame) and e.type == msg_type]

    def errors(self) -> list[sl.FrameError]:
        return [e for e in self.poll() if isinstance(e, sl.FrameError)]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator() as simulator:
        yield simulator
    assert simulator.error is None


@pytest.fixture
def peer(sim: Simulator) -> Iterator[Peer]:
    p = Peer(sim.port_path)
    yield p
    p.port.close()


def test_port_path_is_a_pty_and_telemetry_flows(sim: Simulator, peer: Peer) -> None:
    assert sim.port_path.startswith("/dev/")
    wait_until(lambda: len(peer.frames(sl.MSG_TELEMETRY)) >= 3, 5, "telemetry")
    assert peer.errors() == []
    assert sim.muted


def test_hello_on_request(sim: Simulator, peer: Peer) -> None:
    peer.send(sl.MSG_HELLO_REQUEST)
    wait_until(lambda: bool(peer.frames(sl.MSG_HELLO)), 5, "HELLO")
    hello = sl.unpack_hello(peer.frames(sl.MSG_HELLO)[0].body)
    assert hello.board_id == sim.config.board_id


def test_garbage_and_corrupt_crc_reach_the_device_as_errors(sim: Simulator, peer: Peer) -> None:
    wait_until(lambda: bool(peer.frames(sl.MSG_TELEMETRY)), 5, "first telemetry")
    sim.send_garbage(20)
    wait_until(lambda: len(peer.errors()) >= 1, 5, "a garbled frame")
    sim.corrupt_crc(2)
    wait_until(lambda: any(e.reason == "bad CRC" for e in peer.errors()), 5, "a bad CRC")
    count = len(peer.frames(sl.MSG_TELEMETRY))
    wait_until(lambda: len(peer.frames(sl.MSG_TELEMETRY)) > count + 2, 5, "telemetry again")


def test_go_silent_stops_output(sim: Simulator, peer: Peer) -> None:
    wait_until(lambda: bool(peer.frames(sl.MSG_TELEMETRY)), 5, "first telemetry")
    sim.go_silent()
    dropped = sim.board.frames_dropped
    wait_until(lambda: sim.board.frames_dropped > dropped + 3, 5, "frames dropped while silent")


def test_arm_and_heartbeat_loss_over_the_pty(sim: Simulator, peer: Peer) -> None:
    peer.send(sl.MSG_HEARTBEAT, sl.pack_heartbeat(0))
    peer.send(sl.MSG_ARM)
    wait_until(lambda: not sim.muted, 5, "the simulator to unmute")
    # No more heartbeats: the firmware mutes on its own.
    wait_until(lambda: sim.muted, 5, "the simulator to mute")
    assert sim.fault == sl.FAULT_HEARTBEAT_LOST


def test_hwsim_cli_serves_until_sigterm(tmp_path: Path) -> None:
    link = tmp_path / "link"
    board = tmp_path / "board.json"
    board.write_text(json.dumps({"board_id": "cli-board"}))
    process = subprocess.Popen(
        [HWSIM, "--link-file", str(link), "--config", str(board)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(link.exists, 10, "the link file")
        path = link.read_text().strip()
        peer = Peer(path)
        peer.send(sl.MSG_HELLO_REQUEST)
        wait_until(lambda: bool(peer.frames(sl.MSG_HELLO)), 5, "HELLO from resonera-hwsim")
        assert sl.unpack_hello(peer.frames(sl.MSG_HELLO)[0].body).board_id == "cli-board"
        peer.port.close()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert f"resonera-hwsim: serving on {path}" in out
    assert not link.exists()


def test_hwsim_cli_bad_config_is_one_line(tmp_path: Path) -> None:
    board = tmp_path / "board.json"
    board.write_text(json.dumps({"max_temp": 3}))
    result = subprocess.run(
        [HWSIM, "--config", str(board)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"resonera-hwsim: error: board config {board}: unknown board setting 'max_temp'"
    ]


def test_sigint_also_exits_cleanly() -> None:
    process = subprocess.Popen([HWSIM], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("resonera-hwsim: serving on /dev/")
        os.kill(process.pid, signal.SIGINT)
        process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0


# -- the status light's states of protocol v1.3 over the pty --------------------------------------


def _shown(peer: Peer) -> list[int]:
    return [sl.unpack_light("LIGHT_SHOWN", f.body) for f in peer.frames(sl.MSG_LIGHT_SHOWN)]


def _wait_shown(peer: Peer, count: int) -> None:
    wait_until(lambda: len(_shown(peer)) >= count, 5, f"{count} LIGHT_SHOWN")


def _hello(peer: Peer) -> sl.Hello:
    peer.send(sl.MSG_HELLO_REQUEST)
    wait_until(lambda: bool(peer.frames(sl.MSG_HELLO)), 5, "HELLO")
    return sl.unpack_hello(peer.frames(sl.MSG_HELLO)[0].body)


def test_each_new_light_state_round_trips_and_is_in_the_history(sim: Simulator, peer: Peer) -> None:
    assert _hello(peer).protocol_minor == sl.PROTOCOL_MINOR
    new = [sl.LIGHT_REFUSED, sl.LIGHT_BLOCKED, sl.LIGHT_SHUT_OUT]
    for count, state in enumerate(new, 1):
        peer.send(sl.MSG_LIGHT, sl.pack_light(state))
        _wait_shown(peer, count)
        assert _shown(peer)[-1] == sim.light == state
    assert [state for _t, state in sim.lights_shown] == [sl.LIGHT_IDLE, *new]
    assert [state for _t, state in sim.lights_asked] == new
    times = [t for t, _state in sim.lights_shown]
    assert times == sorted(times)
    assert sim.controller.frames_rejected == 0


def test_a_v1_2_simulator_never_gets_a_state_it_lacks_through_light_for_peer() -> None:
    with Simulator(protocol_minor=2) as sim:
        peer = Peer(sim.port_path)
        try:
            minor = _hello(peer).protocol_minor
            assert minor == 2
            for state in sl.LIGHT_NAMES:  # what the device's monitor does with each state
                peer.send(sl.MSG_LIGHT, sl.pack_light(sl.light_for_peer(state, minor)))
            _wait_shown(peer, len(sl.LIGHT_NAMES))
            asked = [state for _t, state in sim.lights_asked]
            assert asked == [
                0,
                1,
                2,
                3,
                4,
                5,
                sl.LIGHT_DOSE_REACHED,
                sl.LIGHT_FAULT,
                sl.LIGHT_FAULT,
            ]
            assert _shown(peer) == asked
            assert sim.controller.frames_rejected == 0
        finally:
            peer.port.close()
    assert sim.error is None


def test_a_v1_2_simulator_rejects_a_new_state_sent_anyway() -> None:
    with Simulator(protocol_minor=2) as sim:
        peer = Peer(sim.port_path)
        try:
            peer.send(sl.MSG_LIGHT, sl.pack_light(sl.LIGHT_REFUSED))
            wait_until(lambda: sim.controller.frames_rejected == 1, 5, "the LIGHT rejected")
            assert "last_rejected='LIGHT light state is 6, not one of 0 to 5 (protocol v1.2)'" in (
                execute(sim, "status")
            )
            assert sim.light == sl.LIGHT_IDLE
            assert _shown(peer) == []
            assert sim.lights_asked[-1][1] == sl.LIGHT_REFUSED
        finally:
            peer.port.close()


def test_an_unknown_light_state_is_a_protocol_error_with_a_clear_message(
    sim: Simulator, peer: Peer
) -> None:
    peer.send(sl.MSG_LIGHT, bytes((9,)))
    wait_until(lambda: sim.controller.frames_rejected == 1, 5, "the LIGHT rejected")
    assert sim.controller.last_rejection == "LIGHT light state is 9, not one of 0 to 8"
    assert f"protocol=v1.{sl.PROTOCOL_MINOR} rejected=1" in execute(sim, "status")
    assert sim.light == sl.LIGHT_IDLE
    assert [state for _t, state in sim.lights_shown] == [sl.LIGHT_IDLE]
    assert _shown(peer) == []


def test_the_simulator_plays_only_minors_it_knows() -> None:
    with pytest.raises(ValueError, match=r"speaks protocol v1\.2 to v1\.5, not v1\.1"):
        Simulator(protocol_minor=1)


def test_hwsim_cli_plays_an_older_firmware(tmp_path: Path) -> None:
    link = tmp_path / "link"
    process = subprocess.Popen(
        [HWSIM, "--link-file", str(link), "--protocol-minor", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(link.exists, 10, "the link file")
        peer = Peer(link.read_text().strip())
        assert _hello(peer).protocol_minor == 2
        peer.port.close()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0


# -- what the board is (protocol v1.4) over the pty -------------------------------------------------


def _boards(peer: Peer) -> list[sl.BoardInfo]:
    return [sl.unpack_board_info(f.body) for f in peer.frames(sl.MSG_BOARD)]


def test_board_follows_every_hello(sim: Simulator, peer: Peer) -> None:
    _hello(peer)
    wait_until(lambda: bool(_boards(peer)), 5, "BOARD")
    frames = [f for f in peer.poll() if isinstance(f, sl.Frame)]
    kinds = [f.type for f in frames if f.type in (sl.MSG_HELLO, sl.MSG_BOARD)]
    assert kinds[:2] == [sl.MSG_HELLO, sl.MSG_BOARD]
    assert [(b.requires_headphones, b.headphone_switch) for b in _boards(peer)] == [(True, True)]


@pytest.mark.parametrize("minor", [3, 2])
def test_an_older_simulator_sends_no_board(minor: int) -> None:
    with Simulator(protocol_minor=minor) as sim:
        peer = Peer(sim.port_path)
        try:
            assert _hello(peer).protocol_minor == minor
            wait_until(lambda: len(peer.frames(sl.MSG_TELEMETRY)) >= 3, 5, "telemetry")
            assert peer.frames(sl.MSG_BOARD) == []
        finally:
            peer.port.close()
    assert sim.error is None


def test_readings_before_power_up_are_what_the_first_telemetry_says() -> None:
    with Simulator(readings={"headphones": False}) as sim:
        peer = Peer(sim.port_path)
        try:
            wait_until(lambda: bool(peer.frames(sl.MSG_TELEMETRY)), 5, "telemetry")
            first = sl.unpack_telemetry(peer.frames(sl.MSG_TELEMETRY)[0].body)
            assert not first.headphones
        finally:
            peer.port.close()
    with pytest.raises(ValueError, match="no such reading volume"):
        Simulator(readings={"volume": 1.0})
