"""Property tests (hypothesis) of the pure parts (issue 11): envelopes, strings to sign,
SemVer, pairing-code normalisation, refund arithmetic, list cursors, and the JSON guard."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta

import pytest
import semver
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from viopay.bodies import MAX_DEPTH, check_json
from viopay.devices.authn import USER_AGENT_RE, version_below
from viopay.devices.service import PAIRING_ALPHABET, is_pairing_code, normalise_code
from viopay.errors import InvalidRequest, RefundExceedsCharge
from viopay.pagination import decode_cursor, encode_cursor
from viopay.payments.refunds import refund_amount
from viopay_device.protocol.envelope import (
    open_envelope,
    parse_envelope,
    request_aad,
    seal,
)
from viopay_device.protocol.errors import EnvelopeNotOpened, SignatureMismatch
from viopay_device.protocol.signing import (
    attest_string_to_sign,
    charge_string_to_sign,
    sign,
    verify_signature,
)

EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
keys = st.binary(min_size=32, max_size=32)
header_text = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)


# --- envelopes (§3.7): any flipped bit, another AAD or another key is refused ---------------


def _sealed(key: bytes, plaintext: bytes, aad: bytes) -> dict[str, object]:
    envelope: dict[str, object] = seal(key, "ks_test", plaintext, aad)
    return envelope


@EXAMPLES
@given(key=keys, plaintext=st.binary(max_size=512), aad=st.binary(max_size=64))
def test_an_envelope_opens_with_its_key_and_aad(key: bytes, plaintext: bytes, aad: bytes) -> None:
    envelope = parse_envelope(_sealed(key, plaintext, aad))
    assert open_envelope(key, envelope, aad) == plaintext


@EXAMPLES
@given(
    key=keys,
    plaintext=st.binary(max_size=256),
    aad=st.binary(max_size=64),
    data=st.data(),
)
def test_any_flipped_bit_is_refused(
    key: bytes, plaintext: bytes, aad: bytes, data: st.DataObject
) -> None:
    sealed = _sealed(key, plaintext, aad)
    member = data.draw(st.sampled_from(["iv", "ct"]))
    raw = bytearray(base64.b64decode(str(sealed[member])))
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    flipped = sealed | {member: base64.b64encode(bytes(raw)).decode()}
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(key, parse_envelope(flipped), aad)


@EXAMPLES
@given(key=keys, other=keys, plaintext=st.binary(max_size=256), aad=st.binary(max_size=64))
def test_another_key_is_refused(key: bytes, other: bytes, plaintext: bytes, aad: bytes) -> None:
    if other == key:
        return
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(other, parse_envelope(_sealed(key, plaintext, aad)), aad)


@EXAMPLES
@given(
    key=keys,
    plaintext=st.binary(max_size=256),
    path=st.sampled_from(["/pos/charge", "/pos/charge/reverse", "/pos/activate"]),
    other=st.sampled_from(["/pos/charge", "/pos/charge/reverse", "/pos/activate"]),
    subject=header_text,
    other_subject=header_text,
)
def test_another_aad_is_refused(
    key: bytes, plaintext: bytes, path: str, other: str, subject: str, other_subject: str
) -> None:
    aad = request_aad(method="POST", path=path, subject=subject)
    wrong = request_aad(method="POST", path=other, subject=other_subject)
    if wrong == aad:
        return
    with pytest.raises(EnvelopeNotOpened):
        open_envelope(key, parse_envelope(_sealed(key, plaintext, aad)), wrong)


# --- strings to sign (§2.2, §2.4) -----------------------------------------------------------


@EXAMPLES
@given(device=header_text, key_id=header_text, timestamp=header_text, nonce=header_text)
def test_the_attest_string_splits_back_one_way(
    device: str, key_id: str, timestamp: str, nonce: str
) -> None:
    message = attest_string_to_sign(
        device_id=device, key_id=key_id, timestamp=timestamp, nonce=nonce
    )
    assert message.split(b"\n") == [p.encode() for p in (device, key_id, timestamp, nonce)]


@EXAMPLES
@given(
    path=st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E)),
    query=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)),
    body=st.binary(max_size=200),
    terminal=header_text,
    timestamp=header_text,
    nonce=header_text,
)
def test_the_charge_string_holds_each_part_exactly(
    path: str, query: str, body: bytes, terminal: str, timestamp: str, nonce: str
) -> None:
    message = charge_string_to_sign(
        method="POST",
        path=path,
        query=query,
        body=body,
        terminal_id=terminal,
        timestamp=timestamp,
        nonce=nonce,
    )
    head = message.split(b"\n", 3)
    assert head[:3] == [b"POST", path.encode(), query.encode()]
    # Only BODY may hold a line feed: the last three parts are read from the end.
    rest, tail_terminal, tail_timestamp, tail_nonce = head[3].rsplit(b"\n", 3)
    assert (rest, tail_terminal, tail_timestamp, tail_nonce) == (
        body,
        terminal.encode(),
        timestamp.encode(),
        nonce.encode(),
    )


@EXAMPLES
@given(key=keys, message=st.binary(max_size=200), data=st.data())
def test_a_signature_verifies_only_its_message_under_its_key(
    key: bytes, message: bytes, data: st.DataObject
) -> None:
    signature = sign(key, message)
    assert re.fullmatch(r"v1=[A-Za-z0-9+/]{43}=", signature)
    verify_signature(key, message, signature)
    other = data.draw(st.binary(max_size=200))
    if other != message:
        with pytest.raises(SignatureMismatch):
            verify_signature(key, other, signature)
    other_key = data.draw(keys)
    if other_key != key:
        with pytest.raises(SignatureMismatch):
            verify_signature(other_key, message, signature)


# --- SemVer (§2.1) ------------------------------------------------------------------------------

numbers = st.integers(min_value=0, max_value=10_000)
identifiers = st.from_regex(r"\A(?:0|[1-9][0-9]{0,3}|[0-9]*[A-Za-z-][0-9A-Za-z-]{0,5})\Z")
versions = st.builds(
    lambda major, minor, patch, pre: (
        f"{major}.{minor}.{patch}" + (f"-{'.'.join(pre)}" if pre else "")
    ),
    numbers,
    numbers,
    numbers,
    st.lists(identifiers, max_size=3),
)


@EXAMPLES
@given(a=versions, b=versions)
def test_version_order_is_semver_precedence(a: str, b: str) -> None:
    assert version_below(a, b) == (semver.Version.parse(a) < semver.Version.parse(b))
    assert not (version_below(a, b) and version_below(b, a))


@EXAMPLES
@given(version=versions)
def test_a_prerelease_is_below_its_release_and_every_version_reads_from_the_user_agent(
    version: str,
) -> None:
    release = version.split("-", 1)[0]
    assert version_below(version, release) == ("-" in version)
    match = USER_AGENT_RE.match(f"Viopay-POS/{version} (Android 12; PAX-A920)")
    assert match is not None and match["version"] == version


# --- pairing codes (§3.2, §3.4) -----------------------------------------------------------------

codes = st.text(alphabet=PAIRING_ALPHABET, min_size=6, max_size=6)


@EXAMPLES
@given(code=codes, data=st.data())
def test_case_spaces_and_hyphens_do_not_change_a_code(code: str, data: st.DataObject) -> None:
    pieces = []
    for char in code:
        pieces.append(data.draw(st.sampled_from(["", " ", "-", " - "])))
        pieces.append(char.lower() if data.draw(st.booleans()) else char)
    typed = "".join(pieces) + data.draw(st.sampled_from(["", " ", "--"]))
    assert normalise_code(typed) == code
    assert is_pairing_code(normalise_code(typed))


@EXAMPLES
@given(raw=st.text(max_size=12))
def test_only_six_characters_of_the_alphabet_are_a_code(raw: str) -> None:
    code = normalise_code(raw)
    assert is_pairing_code(code) == (len(code) == 6 and all(c in PAIRING_ALPHABET for c in code))
    assert not any(c in code for c in "ILO01") or not is_pairing_code(code)


# --- refund arithmetic (§4.2) --------------------------------------------------------------------


@EXAMPLES
@given(
    charged=st.integers(min_value=1, max_value=10**9),
    requests=st.lists(
        st.one_of(st.none(), st.integers(min_value=-5, max_value=10**9)), max_size=12
    ),
)
def test_refunds_never_pass_the_charge(charged: int, requests: list[int | None]) -> None:
    refunded = 0
    for requested in requests:
        try:
            amount = refund_amount(
                charged=charged, refunded=refunded, pending=0, requested=requested
            )
        except RefundExceedsCharge:
            left = charged - refunded
            assert left == 0 or (requested is not None and not 1 <= requested <= left)
            continue
        assert 1 <= amount <= charged - refunded
        if requested is None:
            assert amount == charged - refunded  # all that is left
        refunded += amount
    assert 0 <= refunded <= charged


@EXAMPLES
@given(
    charged=st.integers(min_value=1, max_value=10**6),
    refunded=st.integers(min_value=0, max_value=10**6),
    pending=st.integers(min_value=0, max_value=10**6),
)
def test_refunds_at_the_processor_count_as_made(charged: int, refunded: int, pending: int) -> None:
    left = charged - refunded - pending
    if left < 1:
        with pytest.raises(RefundExceedsCharge):
            refund_amount(charged=charged, refunded=refunded, pending=pending, requested=None)
    else:
        assert (
            refund_amount(charged=charged, refunded=refunded, pending=pending, requested=None)
            == left
        )


# --- list cursors (§6) ---------------------------------------------------------------------------

moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
idents = st.text(min_size=1, max_size=128).filter(lambda s: "\x00" not in s)


@EXAMPLES
@given(at=moments, ident=idents)
def test_a_cursor_round_trips(at: datetime, ident: str) -> None:
    assert decode_cursor(encode_cursor(at, ident)) == (at, ident)


@EXAMPLES
@given(
    raw=st.one_of(
        st.text(max_size=80),
        st.binary(max_size=80).map(lambda b: base64.urlsafe_b64encode(b).decode()),
    )
)
def test_any_other_cursor_is_400_or_an_aware_time_and_an_id(raw: str) -> None:
    try:
        at, ident = decode_cursor(raw)
    except InvalidRequest:
        return
    assert at.tzinfo is not None and at.utcoffset() == timedelta(0)
    assert 0 < len(ident) <= 128 and "\x00" not in ident


# --- the JSON guard (§1) -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=20,
)


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


@EXAMPLES
@given(value=json_values, wrap=st.integers(min_value=0, max_value=40))
def test_the_json_guard_refuses_exactly_nul_and_depth_over_32(value: object, wrap: int) -> None:
    for _ in range(wrap):
        value = [value]
    refused = _depth(value) > MAX_DEPTH or _has_nul(value)
    try:
        check_json(value)
    except InvalidRequest:
        assert refused
    else:
        assert not refused
