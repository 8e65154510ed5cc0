"""Ed25519 signature verification (RFC 8032, section 5.1.7) for the safety MCU's bootloader.

MicroPython on the RP2040 has neither Ed25519 nor SHA-512 (its hashlib has sha256 only), so the
board could not check an update's signature and refused every update. This is verification only
(the board never signs), in plain Python that runs on MicroPython (big ints, three-argument
``pow``) and on CPython, where the tests hold it against ``cryptography`` and ``hashlib``.

Not constant-time, which is fine for verifying: every input is public (key, message, signature).
Cofactorless check, with R compared as bytes, as OpenSSL does: ``[S]B - [k]A`` must encode to R.
"""

import hashlib
import struct

try:
    from resonera.hardware.firmware.bootloader import SignatureCheck
except ImportError:  # on the MCU: flat files next to main.py
    from bootloader import SignatureCheck  # type: ignore[import-not-found,no-redef]

# -- SHA-512 (FIPS 180-4), used only where hashlib has none ----------------------------------------

_M64 = (1 << 64) - 1
#: MicroPython's hashlib has sha256 (and sha1) only.
_HAS_SHA512 = hasattr(hashlib, "sha512")


def _iroot(n: int, k: int) -> int:
    """The integer k-th root of n (floor), by Newton's method from above."""
    x = 1
    while x**k <= n:  # a start above the root (MicroPython's int has no bit_length)
        x <<= 1
    while True:
        y = ((k - 1) * x + n // x ** (k - 1)) // k
        if y >= x:
            return x
        x = y


def _primes(count: int) -> "list[int]":
    found: list[int] = []
    n = 2
    while len(found) < count:
        if all(n % p for p in found if p * p <= n):
            found.append(n)
        n += 1
    return found


# FIPS 180-4 defines the constants as the first 64 bits of the fractional parts of the square roots
# (initial hash) and cube roots (round constants) of the first primes: computed rather than typed,
# so no constant can carry a typo (the tests compare the digest with hashlib's).
_PRIMES = _primes(80)
_H0 = [_iroot(p << 128, 2) & _M64 for p in _PRIMES[:8]]
_K = [_iroot(p << 192, 3) & _M64 for p in _PRIMES]


def _rotr(x: int, n: int) -> int:
    return ((x >> n) | (x << (64 - n))) & _M64


def _compress(state: "list[int]", block: bytes) -> None:
    w = list(struct.unpack(">16Q", block))
    for t in range(16, 80):
        a, b = w[t - 15], w[t - 2]
        s0 = _rotr(a, 1) ^ _rotr(a, 8) ^ (a >> 7)
        s1 = _rotr(b, 19) ^ _rotr(b, 61) ^ (b >> 6)
        w.append((w[t - 16] + s0 + w[t - 7] + s1) & _M64)
    a, b, c, d, e, f, g, h = state
    for t in range(80):
        t1 = h + (_rotr(e, 14) ^ _rotr(e, 18) ^ _rotr(e, 41)) + ((e & f) ^ (~e & g)) + _K[t] + w[t]
        t2 = (_rotr(a, 28) ^ _rotr(a, 34) ^ _rotr(a, 39)) + ((a & b) ^ (a & c) ^ (b & c))
        h, g, f, e = g, f, e, (d + t1) & _M64
        d, c, b, a = c, b, a, (t1 + t2) & _M64
    for i, v in enumerate((a, b, c, d, e, f, g, h)):
        state[i] = (state[i] + v) & _M64


def sha512_pure(data: bytes) -> bytes:
    """SHA-512 of ``data`` in plain Python (the MCU's; CPython tests it against hashlib)."""
    state = list(_H0)
    tail_len = len(data) % 128
    whole = len(data) - tail_len
    for offset in range(0, whole, 128):
        _compress(state, data[offset : offset + 128])
    # The padding: a 1 bit, zeros, then the length in bits as 128 bits, to a whole number of blocks.
    tail = bytes(data[whole:]) + b"\x80"
    tail += bytes((112 - len(tail)) % 128) + (len(data) * 8).to_bytes(16, "big")
    for offset in range(0, len(tail), 128):
        _compress(state, tail[offset : offset + 128])
    return struct.pack(">8Q", *state)


def sha512(data: bytes) -> bytes:
    """SHA-512 of ``data``: hashlib's where it has one, else ``sha512_pure``."""
    if _HAS_SHA512:
        return hashlib.sha512(data).digest()
    return sha512_pure(data)


# -- the curve (edwards25519: -x^2 + y^2 = 1 + d x^2 y^2 over GF(p)) -------------------------------

P = (1 << 255) - 19
#: The order of the base point: a valid S is below it (a larger one is malleable, refused).
L = (1 << 252) + 27742317777372353535851937790883648493
D = -121665 * pow(121666, P - 2, P) % P
_SQRT_M1 = pow(2, (P - 1) // 4, P)

# A point is in extended coordinates (X, Y, Z, T) with x = X/Z, y = Y/Z, x*y = T/Z: additions need
# no inversion, and the one formula below is complete on this curve (it also doubles).
_IDENTITY = (0, 1, 1, 0)


def _add(
    p1: "tuple[int, int, int, int]", p2: "tuple[int, int, int, int]"
) -> "tuple[int, int, int, int]":
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % P
    b = (y1 + x1) * (y2 + x2) % P
    c = 2 * D * t1 * t2 % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = b - a, dd - c, dd + c, b + a
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _multiply(
    scalar: int, point: "tuple[int, int, int, int]", tick: "object" = None
) -> "tuple[int, int, int, int]":
    result = _IDENTITY
    addend = point
    while scalar:
        if tick is not None:
            tick()  # type: ignore[operator]
        if scalar & 1:
            result = _add(result, addend)
        addend = _add(addend, addend)
        scalar >>= 1
    return result


def _encode(point: "tuple[int, int, int, int]") -> bytes:
    x, y, z, _ = point
    z_inv = pow(z, P - 2, P)
    x, y = x * z_inv % P, y * z_inv % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _decode(raw: bytes) -> "tuple[int, int, int, int] | None":
    """The point ``raw`` encodes (RFC 8032, 5.1.3), or None when it is none: y not below p, or
    no x on the curve for that y, or the sign bit set on x = 0."""
    if len(raw) != 32:
        return None
    n = int.from_bytes(raw, "little")
    sign = n >> 255
    y = n & ((1 << 255) - 1)
    if y >= P:
        return None
    # x^2 = u / v; one exponentiation gives a candidate root of u/v (p = 5 mod 8)
    u = (y * y - 1) % P
    v = (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    vxx = v * x * x % P
    if vxx == (-u) % P:
        x = x * _SQRT_M1 % P
    elif vxx != u:
        return None  # u/v is no square: not on the curve
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = P - x
    return (x, y, 1, x * y % P)


_B = _decode((4 * pow(5, P - 2, P) % P).to_bytes(32, "little"))  # y = 4/5, x even


def verify(public_key: bytes, message: bytes, signature: bytes, tick: "object" = None) -> bool:
    """True only when ``signature`` is ``public_key``'s Ed25519 signature of ``message``.
    ``tick`` (a callable, e.g. the watchdog's ``feed``) is called some 500 times along the way: on
    the RP2040 a verification takes far longer than the watchdog's timeout."""
    if len(signature) != 64:
        return False
    a = _decode(bytes(public_key))
    if a is None or _B is None:
        return False
    r_raw = bytes(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if s >= L:
        return False
    k = int.from_bytes(sha512(r_raw + bytes(public_key) + bytes(message)), "little") % L
    minus_a = ((P - a[0]) % P, a[1], a[2], (P - a[3]) % P)
    return _encode(_add(_multiply(s, _B, tick), _multiply(k, minus_a, tick))) == r_raw


class MicroEd25519Check(SignatureCheck):
    """The bootloader's signature check on the MCU (and anywhere): this module's ``verify``, with
    ``tick`` called along the way (main.py passes the watchdog's ``feed``)."""

    def __init__(self, tick: "object" = None) -> None:
        self.tick = tick

    def __call__(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        return verify(public_key, message, signature, self.tick)
