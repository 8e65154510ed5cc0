"""The MCU's own Ed25519 verification and SHA-512 (hardware/firmware/ed25519.py), held against the
RFC 8032 test vectors, ``cryptography`` and ``hashlib``, and used by the bootloader for a real update."""

from __future__ import annotations

import hashlib
import random
import time

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from resonera.common import serial_link as sl
from resonera.hardware.firmware import bootloader as bl
from resonera.hardware.firmware import ed25519
from resonera.hardware.sim import build_image, sign_image

# RFC 8032, section 7.1, TEST 1-3: (secret key, public key, message, signature).
RFC_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bac"
        "c61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e"
        "458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290"
        "ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


def openssl_verifies(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def not_on_curve(rng: random.Random) -> bytes:
    """32 bytes that encode no point: a y whose x^2 has no square root."""
    while True:
        raw = rng.randbytes(32)
        if ed25519._decode(raw) is None and int.from_bytes(raw, "little") % (1 << 255) < ed25519.P:
            return raw


@pytest.mark.parametrize("has_sha512", [True, False], ids=["hashlib", "pure-sha512"])
@pytest.mark.parametrize("vector", RFC_VECTORS, ids=["test1", "test2", "test3"])
def test_the_rfc_8032_vectors_verify_and_a_changed_bit_does_not(
    vector: tuple[str, str, str, str], has_sha512: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ed25519, "_HAS_SHA512", has_sha512)  # False: as on MicroPython
    secret, public, message, signature = vector
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    pub, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert (
        key.public_key().public_bytes_raw() == pub and key.sign(msg) == sig
    )  # vectors copied right
    assert ed25519.verify(pub, msg, sig)
    assert not ed25519.verify(pub, msg + b"\x00", sig)
    assert not ed25519.verify(pub, msg, flip(sig, 3))
    assert not ed25519.verify(flip(pub, 9), msg, sig)


def test_it_agrees_with_cryptography_on_200_random_keys_and_messages() -> None:
    rng = random.Random(25)
    refused = 0
    started = time.perf_counter()
    checks = 0
    for _ in range(200):
        key = Ed25519PrivateKey.generate()
        pub = key.public_key().public_bytes_raw()
        msg = rng.randbytes(rng.randrange(0, 200))
        sig = key.sign(msg)
        cases = [
            (pub, msg, sig),
            (pub, flip(msg, rng.randrange(len(msg) * 8)) if msg else b"\x00", sig),
            (pub, msg, flip(sig, rng.randrange(512))),
            (flip(pub, rng.randrange(256)), msg, sig),
        ]
        for case in cases:
            mine = ed25519.verify(*case)
            checks += 1
            assert mine == openssl_verifies(*case), case
            refused += not mine
        assert ed25519.verify(*cases[0])
    elapsed = time.perf_counter() - started
    print(f"\n{checks} verifications, {refused} refused; {elapsed / checks * 1000:.1f} ms each")
    assert refused == 600  # every changed bit, in message, signature or key, is caught


def test_a_non_canonical_s_and_points_off_the_curve_are_refused() -> None:
    rng = random.Random(8032)
    key = Ed25519PrivateKey.generate()
    pub, msg = key.public_key().public_bytes_raw(), b"firmware 1.5.0"
    sig = key.sign(msg)
    s = int.from_bytes(sig[32:], "little")
    malleable = sig[:32] + (s + ed25519.L).to_bytes(32, "little")  # the same point, S >= L
    off_curve = not_on_curve(rng)
    for case in [
        (pub, msg, malleable),
        (off_curve, msg, sig),  # a public key that is no point
        (pub, msg, off_curve + sig[32:]),  # an R that is no point
        (pub, msg, sig[:63]),  # too short
        (pub[:31], msg, sig),
    ]:
        assert not ed25519.verify(*case)
        assert not openssl_verifies(*case)


def test_the_pure_sha512_matches_hashlib_for_every_length_up_to_300() -> None:
    rng = random.Random(180)
    started = time.perf_counter()
    for length in range(301):
        data = rng.randbytes(length)
        assert ed25519.sha512_pure(data) == hashlib.sha512(data).digest(), length
    print(f"\npure SHA-512: {(time.perf_counter() - started) / 301 * 1000:.2f} ms a message")


def test_the_bootloader_takes_an_update_signed_by_the_pinned_key_with_this_check() -> None:
    pinned, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    flash = bl.Flash(16 * 1024)
    flash.install_factory(build_image("1.4.2"))
    running = bl.boot(flash)
    assert running is not None
    fed: list[int] = []  # the watchdog, fed while a signature is checked
    loader = bl.Bootloader(
        flash,
        running,
        pinned.public_key().public_bytes_raw(),
        ed25519.MicroEd25519Check(tick=lambda: fed.append(1)),
    )

    def begin_of(key: Ed25519PrivateKey) -> tuple[sl.UpdateBegin, bytes]:
        signature, image = sl.unpack_signed_image(sign_image(key, build_image("1.5.0", 3000)))
        return sl.UpdateBegin(len(image), hashlib.sha256(image).digest(), "1.5.0", signature), image

    forged, _ = begin_of(other)
    refused = loader.begin(forged, sound_allowed=False)
    assert refused.status == sl.UPDATE_REFUSED_SIGNATURE
    assert "not signed by the pinned update key" in refused.text
    begin, image = begin_of(pinned)
    fed.clear()
    assert loader.begin(begin, sound_allowed=False).status == sl.UPDATE_READY
    assert len(fed) >= 400  # two scalar multiplications, one tick per bit
    assert loader.chunk(0, image).status == sl.UPDATE_CHUNK_OK
    assert loader.commit().status == sl.UPDATE_COMMITTED
    after = bl.boot(flash)
    assert after is not None and (after.version, after.trial) == ("1.5.0", True)
