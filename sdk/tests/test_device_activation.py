"""Activation against the fake server: headers, keys, config, terminal parameters, activate."""

import base64
from typing import Any

import httpx
import pytest

from device_fake import (
    DEVICE_ID,
    IDENTITY_KEY_ID,
    IDENTITY_SECRET,
    TERMINAL_ID,
    FakeServer,
    params_document,
)
from viopay_device import (
    AppVersionUnsupported,
    DeviceClient,
    IdentityKey,
    InvalidToken,
    KeyCheckMismatch,
    MemoryKeyStore,
    NotActivated,
    PairingCodeExpired,
    ResponseIntegrityError,
    StepReport,
    activate_device,
)
from viopay_device.activation import STEPS
from viopay_device.protocol.keyblocks import wrap_key

UA = "Viopay-POS/1.4.2 (Android 12; PAX-A920)"


def paths(server: FakeServer) -> list[str]:
    return [f"{r.method} {r.url.path}" for r in server.requests]


def test_activate_device_runs_every_step_in_order(server: FakeServer, client: DeviceClient) -> None:
    reports: list[StepReport] = []
    polls: list[str] = []
    result = activate_device(
        client, on_step=reports.append, on_poll=lambda s: polls.append(s.status)
    )

    assert [r.name for r in reports] == list(STEPS)
    assert all(r.elapsed >= 0 for r in reports)
    assert getattr(reports[1].result, "pairing_code", None) == "K7M2QX"
    assert polls == ["inactive", "claimed"]
    assert result.activation.status == "activated"
    assert result.config.terminal_id == TERMINAL_ID
    assert result.terminal_parameters.document == params_document()
    assert result.terminal_parameters.chunk_count > 2
    store = client.key_store
    assert store.pending is None and store.previous is None
    assert store.current is not None and store.current.key_set_id == result.activation.key_set_id
    assert client.terminal_id == TERMINAL_ID
    assert paths(server)[:3] == ["POST /pos/bootstrap", "POST /pos/pairing-code", "GET /pos/status"]


def test_a_claimed_device_skips_pairing(server: FakeServer, client: DeviceClient) -> None:
    server.status = "claimed"
    names: list[str] = []
    activate_device(client, on_step=lambda r: names.append(r.name))
    assert names == [s for s in STEPS if s not in ("pairing_code", "wait_until_claimed")]


def test_activation_and_token_headers(server: FakeServer, client: DeviceClient) -> None:
    activate_device(client)
    for request in server.requests:
        assert request.headers["X-Device-Id"] == DEVICE_ID
        assert request.headers["User-Agent"] == UA
        assert request.headers["X-Client-Type"] == "pos"
        token_call = request.url.path in (
            "/pos/keys",
            "/pos/config",
            "/pos/terminal-parameters",
            "/pos/activate",
        )
        assert request.headers.get("Authorization", "").startswith("Attestation att_") == token_call
        signed = request.url.path in ("/pos/pairing-code", "/pos/status", "/pos/attest")
        assert ("X-Signature" in request.headers) == signed  # §2.1: pairing is signed too
        if signed:
            assert request.headers["X-Key-Id"] == "device-id-key-2025-01"
            assert request.headers["X-Signature"].startswith("v1=")
        if request.url.path == "/pos/attest":
            assert request.headers["X-Timestamp"] == "2025-12-13T14:25:35Z"  # one poll interval in


def test_wait_until_claimed_polls_at_the_server_interval(
    server: FakeServer, client: DeviceClient
) -> None:
    server.claim_after_polls = 4
    slept: list[float] = []
    client.request_pairing_code()

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        server.sleep(seconds)

    status = client.wait_until_claimed(sleep=sleep)
    assert status.claimed and status.terminal_id == TERMINAL_ID
    assert slept == [5.0, 5.0, 5.0]


def test_an_expired_pairing_code_raises(server: FakeServer, client: DeviceClient) -> None:
    server.claim_after_polls = 0  # nobody claims
    client.request_pairing_code()
    with pytest.raises(PairingCodeExpired):
        client.wait_until_claimed()
    assert server.now >= server.clock().replace(minute=30)  # 300 s of polling went by


def test_activate_device_renews_an_expired_pairing_code(
    server: FakeServer, client: DeviceClient
) -> None:
    server.claim_after_polls = 0
    names: list[str] = []
    with pytest.raises(PairingCodeExpired):
        activate_device(client, on_step=lambda r: names.append(r.name), pairing_attempts=2)
    assert names == ["bootstrap", "pairing_code", "pairing_code"]


def test_keys_are_unwrapped_checked_and_kept_pending(
    server: FakeServer, client: DeviceClient
) -> None:
    server.status = "claimed"
    key_set = client.download_keys()  # attests first: no token yet
    assert paths(server) == ["POST /pos/attest", "POST /pos/keys"]
    assert client.key_store.pending is key_set and client.key_store.current is None
    assert {t: key for t, (_, key) in server.key_sets[key_set.key_set_id].items()} == dict(
        key_set.keys
    )
    assert key_set.hmac_key_id == f"mac-{key_set.key_set_id}"
    assert key_set.msk_kid == f"msk-{key_set.key_set_id}"
    transport_key = base64.b64decode(httpx_json(server.requests[-1])["transport_key"])
    assert len(transport_key) == 32


def httpx_json(request: httpx.Request) -> dict[str, Any]:
    import orjson

    value = orjson.loads(request.content)
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("key_type", ["TMK", "KEK", "MSK", "MAC"])
def test_a_kcv_mismatch_is_refused(server: FakeServer, client: DeviceClient, key_type: str) -> None:
    server.status = "claimed"

    def tamper(doc: dict[str, Any]) -> None:
        entry = next(e for e in doc["keys"] if e["type"] == key_type)
        entry["kcv"] = "000000" if entry["kcv"] != "000000" else "111111"

    server.keys_hook = tamper
    with pytest.raises(KeyCheckMismatch) as caught:
        client.download_keys()
    assert caught.value.key_type == key_type
    assert client.key_store.pending is None


def test_a_block_of_the_wrong_type_is_refused(server: FakeServer, client: DeviceClient) -> None:
    server.status = "claimed"

    def swap_tpk_for_tdk_header(doc: dict[str, Any]) -> None:
        key_set_id = doc["key_set_id"]
        kek = server.key_sets[key_set_id]["KEK"][1]
        tpk_key = server.key_sets[key_set_id]["TPK"][1]
        entry = next(e for e in doc["keys"] if e["type"] == "TPK")
        entry["key_block"] = wrap_key(kek, "TDK", tpk_key)  # right key, wrong header

    server.keys_hook = swap_tpk_for_tdk_header
    with pytest.raises(KeyCheckMismatch):
        client.download_keys()


def test_a_wrong_wrapped_by_is_refused(server: FakeServer, client: DeviceClient) -> None:
    server.status = "claimed"
    server.keys_hook = lambda doc: doc["keys"][2].update(wrapped_by="TMK")
    with pytest.raises(KeyCheckMismatch):
        client.download_keys()


def test_config_is_cached_by_etag(server: FakeServer, client: DeviceClient) -> None:
    server.status = "claimed"
    client.download_keys()
    first = client.fetch_config()
    second = client.fetch_config()
    assert second is first
    config_requests = [r for r in server.requests if r.url.path == "/pos/config"]
    assert "If-None-Match" not in config_requests[0].headers
    assert config_requests[1].headers["If-None-Match"] == first.etag
    assert first.config_version == 3 and first.document["terminal"]["device_id"] == DEVICE_ID


def test_token_calls_reattest_once_on_invalid_token(
    server: FakeServer, client: DeviceClient
) -> None:
    server.status = "claimed"
    client.attest()
    server.tokens.clear()  # the server forgot every token (disabled and enabled, say)
    client.download_keys()
    assert paths(server) == [
        "POST /pos/attest",
        "POST /pos/keys",
        "POST /pos/attest",
        "POST /pos/keys",
    ]


def test_a_token_refused_right_after_attest_is_raised(
    server: FakeServer, client: DeviceClient
) -> None:
    server.status = "claimed"
    original = server.handle

    def forget_tokens(request: httpx.Request) -> httpx.Response:
        response = original(request)
        server.tokens.clear()
        return response

    server.handle = forget_tokens  # type: ignore[method-assign]
    with DeviceClient(
        "https://pos.test",
        device_id=DEVICE_ID,
        key_store=client.key_store,
        transport=httpx.MockTransport(server.handle),
        clock=server.clock,
    ) as fresh:
        with pytest.raises(InvalidToken):
            fresh.download_keys()


def test_an_expiring_token_is_renewed_locally(server: FakeServer, client: DeviceClient) -> None:
    server.status = "claimed"
    client.attest()
    server.sleep(290)  # 10 s left: inside the refresh margin
    client.download_keys()
    assert paths(server) == ["POST /pos/attest", "POST /pos/attest", "POST /pos/keys"]


def test_activate_needs_a_pending_set(client: DeviceClient) -> None:
    with pytest.raises(NotActivated):
        client.activate()


def test_reactivation_keeps_the_old_set_as_previous(
    server: FakeServer, activated: DeviceClient
) -> None:
    old = activated.key_store.current
    assert old is not None
    activation = activated.rotate_keys()
    store = activated.key_store
    assert store.current is not None and store.current.key_set_id == activation.key_set_id
    assert store.previous is old and store.pending is None


# -- terminal parameters (§3.9) -------------------------------------------------------------------


@pytest.fixture
def keyed(server: FakeServer, client: DeviceClient) -> DeviceClient:
    server.status = "claimed"
    client.download_keys()
    return client


def test_terminal_parameters_are_reassembled(server: FakeServer, keyed: DeviceClient) -> None:
    params = keyed.fetch_terminal_parameters()
    chunk_bodies = [
        httpx_json(r) for r in server.requests if r.url.path == "/pos/terminal-parameters"
    ]
    assert [b["chunk"] for b in chunk_bodies] == list(range(params.chunk_count))
    assert params.size == len(server.params)
    assert params.document == params_document()


def test_terminal_parameters_are_cached_by_sha(server: FakeServer, keyed: DeviceClient) -> None:
    first = keyed.fetch_terminal_parameters()
    server.requests.clear()
    assert keyed.fetch_terminal_parameters() is first
    assert len(server.requests) == 1
    assert server.requests[0].headers["If-None-Match"] == f'"{first.sha256}"'


def tamper_ct(index: int, answer: dict[str, Any]) -> dict[str, Any]:
    if index == 1:
        ct = bytearray(base64.b64decode(answer["ct"]))
        ct[0] ^= 1
        answer["ct"] = base64.b64encode(bytes(ct)).decode()
    return answer


def relabel(server: FakeServer) -> Any:
    """Answer chunk 2 when chunk 1 is asked, its meta claiming index 1."""

    def hook(index: int, answer: dict[str, Any]) -> dict[str, Any]:
        if index == 1:
            other = server._terminal_parameters(fake_chunk_request(server, 2))
            swapped = httpx_json_response(other)
            swapped["chunk"]["index"] = 1
            return swapped
        return answer

    return hook


def swap_honestly(server: FakeServer) -> Any:
    """Answer chunk 2 (with its own, true meta) when chunk 1 is asked."""

    def hook(index: int, answer: dict[str, Any]) -> dict[str, Any]:
        if index == 1:
            return httpx_json_response(server._terminal_parameters(fake_chunk_request(server, 2)))
        return answer

    return hook


def wrong_aad(server: FakeServer) -> Any:
    """Seal chunk 1 with the plain response AAD, without the chunk suffix."""
    from viopay_device.protocol.envelope import response_aad, seal

    def hook(index: int, answer: dict[str, Any]) -> dict[str, Any]:
        if index == 1:
            kid, key = server.msk(list(server.key_sets)[-1])
            aad = response_aad(
                method="POST", path="/pos/terminal-parameters", subject=DEVICE_ID, nonce=""
            )
            data = server.params[32768:65536]
            return seal(key, kid, data, aad) | {"chunk": answer["chunk"]}
        return answer

    return hook


def other_sha(index: int, answer: dict[str, Any]) -> dict[str, Any]:
    if index == 1:
        answer["chunk"]["sha256"] = "0" * 64
    return answer


def fake_chunk_request(server: FakeServer, index: int) -> httpx.Request:
    token = next(iter(server.tokens))
    import orjson

    return httpx.Request(
        "POST",
        "https://pos.test/pos/terminal-parameters",
        content=orjson.dumps({"chunk": index}),
        headers={
            "Authorization": f"Attestation {token}",
            "X-Device-Id": DEVICE_ID,
            "Content-Type": "application/json",
        },
    )


def httpx_json_response(response: httpx.Response) -> dict[str, Any]:
    import orjson

    value = orjson.loads(response.content)
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize(
    "make_hook",
    [
        pytest.param(lambda s: tamper_ct, id="tampered"),
        pytest.param(relabel, id="swapped-relabelled"),
        pytest.param(swap_honestly, id="swapped"),
        pytest.param(wrong_aad, id="wrong-aad"),
        pytest.param(lambda s: other_sha, id="meta-changes"),
    ],
)
def test_a_bad_chunk_is_refused(server: FakeServer, keyed: DeviceClient, make_hook: Any) -> None:
    server.chunk_hook = make_hook(server)
    with pytest.raises(ResponseIntegrityError):
        keyed.fetch_terminal_parameters()


def test_a_truncated_stream_is_refused(server: FakeServer, keyed: DeviceClient) -> None:
    server.params = server.params[:-10]  # meta and chunks agree, but gzip does not finish
    from viopay_device import ProtocolError

    with pytest.raises(ProtocolError):
        keyed.fetch_terminal_parameters()


def test_polling_waits_out_rate_limits(server: FakeServer) -> None:
    limited = [True]

    def limit_once(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/pos/status" and limited:
            limited.clear()
            body = {"code": "rate_limited", "status": 429}
            return httpx.Response(429, json=body, headers={"Retry-After": "17"})
        return server.handle(request)

    slept: list[float] = []
    with DeviceClient(
        "https://pos.test",
        device_id=DEVICE_ID,
        key_store=make_store(),
        transport=httpx.MockTransport(limit_once),
        clock=server.clock,
    ) as client:
        client.request_pairing_code()
        status = client.wait_until_claimed(sleep=slept.append)
    assert status.claimed and slept[0] == 17.0


def test_an_old_app_version_is_refused(server: FakeServer) -> None:
    def too_old(request: httpx.Request) -> httpx.Response:
        body = {"code": "app_version_unsupported", "status": 426, "min_supported_version": "2.0.0"}
        return httpx.Response(426, json=body)

    with DeviceClient(
        "https://pos.test",
        device_id=DEVICE_ID,
        key_store=make_store(),
        transport=httpx.MockTransport(too_old),
        app_version="1.0.0",
    ) as client:
        with pytest.raises(AppVersionUnsupported) as caught:
            client.request_pairing_code()
    assert caught.value.min_supported_version == "2.0.0"


def make_store() -> MemoryKeyStore:
    return MemoryKeyStore(IdentityKey(IDENTITY_KEY_ID, IDENTITY_SECRET))
