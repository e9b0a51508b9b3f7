"""Races (PROTOCOL §1): concurrent requests are answered as if they had come one after another.
Each test reproduces a burst that answered 500 or let too many through before."""

from __future__ import annotations

import re
import secrets
import threading
from collections import Counter
from collections.abc import Callable

import httpx
import orjson
import pytest

from support.helpers import (
    SEEN_SECRETS,
    Admin,
    MakeMerchant,
    ProvisionedDevice,
    Server,
    claim_with,
    problem,
    sdk_client,
)
from viopay_device import KeySet
from viopay_device.protocol.envelope import request_aad, seal


def burst(count: int, call: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """``count`` calls started together, one thread each (a barrier lines them up)."""
    barrier = threading.Barrier(count)
    answers: list[httpx.Response | None] = [None] * count
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            answers[index] = call(index)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    return [a for a in answers if a is not None]


def statuses(answers: list[httpx.Response]) -> Counter[int]:
    return Counter(a.status_code for a in answers)


# --- activations --------------------------------------------------------------------------


@pytest.fixture
def device(admin: Admin) -> ProvisionedDevice:
    provisioned: ProvisionedDevice = admin.provision()
    return provisioned


def test_concurrent_activations_of_two_key_sets_of_one_device_do_not_deadlock(
    server: Server, device: ProvisionedDevice, make_merchant: MakeMerchant
) -> None:
    client = sdk_client(server.url, device)
    try:
        claim_with(client, make_merchant())
        client.attest()
        sets: list[KeySet] = [client.download_keys(), client.download_keys()]
        for key_set in sets:
            for key_type in key_set.key_ids:
                SEEN_SECRETS.add(key_set.key(key_type).hex())
        config_version = client.fetch_config(key_set_id=sets[1].key_set_id).config_version
        token = client._token
        assert token is not None
        SEEN_SECRETS.add(token)
    finally:
        client.close()

    def body(key_set: KeySet) -> bytes:
        plaintext = {
            "key_set_id": key_set.key_set_id,
            "kcv": dict(key_set.kcvs),
            "config_version": config_version,
            "app_version": "1.4.2",
        }
        aad = request_aad(method="POST", path="/pos/activate", subject=device.device_id)
        return orjson.dumps(seal(key_set.key("MSK"), key_set.msk_kid, orjson.dumps(plaintext), aad))

    bodies = [body(key_set) for key_set in sets]
    headers = {
        "Authorization": f"Attestation {token}",
        "X-Device-Id": device.device_id,
        "Content-Type": "application/json",
    }
    with httpx.Client(base_url=server.url, timeout=60) as http:
        answers = burst(
            10, lambda i: http.post("/pos/activate", content=bodies[i % 2], headers=headers)
        )
    counts = statuses(answers)
    assert set(counts) <= {200, 409}, [a.text for a in answers if a.status_code >= 500]
    assert counts[200] >= 1


# --- failed-claim limits (§3.4) -------------------------------------------------------------


def wrong_code() -> str:
    """Six characters of the alphabet that no device holds (a live code is random)."""
    return "".join(secrets.choice("ABCDEFGHJKMNPQRSTUVWXYZ23456789") for _ in range(6))


def test_sixty_parallel_wrong_claims_of_one_user_get_exactly_five_404s(
    make_merchant: MakeMerchant,
) -> None:
    owner = make_merchant()
    codes = [wrong_code() for _ in range(60)]
    answers = burst(60, lambda i: owner.http.post("/pos/claim", json={"pairing_code": codes[i]}))
    assert statuses(answers) == Counter({404: 5, 429: 55})
    for answer in answers:
        code = answer.json()["code"]
        assert code == ("pairing_code_invalid" if answer.status_code == 404 else "rate_limited")


def test_a_malformed_code_is_400_and_does_not_count(
    admin: Admin, make_merchant: MakeMerchant
) -> None:
    owner = make_merchant()
    for malformed in ("AB3", "ABCDEFG", "ABCDE0", "ABC-DE1", "ÄBCDEF"):
        answer = owner.http.post("/pos/claim", json={"pairing_code": malformed})
        problem(answer, 400, "invalid_request")
    for _ in range(5):  # the five failures allowed are all still there
        answer = owner.http.post("/pos/claim", json={"pairing_code": wrong_code()})
        problem(answer, 404, "pairing_code_invalid")
    problem(owner.http.post("/pos/claim", json={"pairing_code": "AB3"}), 400, "invalid_request")
    problem(owner.http.post("/pos/claim", json={"pairing_code": wrong_code()}), 429, "rate_limited")


def test_a_right_claim_is_not_counted_as_a_failure(
    server: Server, admin: Admin, make_merchant: MakeMerchant
) -> None:
    owner = make_merchant()
    for _ in range(4):
        problem(
            owner.http.post("/pos/claim", json={"pairing_code": wrong_code()}),
            404,
            "pairing_code_invalid",
        )
    for _ in range(3):  # three right claims in a row leave the fifth failure available
        client = sdk_client(server.url, admin.provision())
        try:
            claim_with(client, owner)
        finally:
            client.close()
    problem(
        owner.http.post("/pos/claim", json={"pairing_code": wrong_code()}),
        404,
        "pairing_code_invalid",
    )
    problem(owner.http.post("/pos/claim", json={"pairing_code": wrong_code()}), 429, "rate_limited")


# --- portal sign-in limits --------------------------------------------------------------------


def test_forty_parallel_wrong_sign_ins_are_refused_past_the_limit(server: Server) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=60) as http:
        page = http.get("/portal/signin")
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found is not None
        form = {
            "csrf_token": found.group(1),
            "mode": "client",
            "client_id": f"cli_{secrets.token_hex(8)}",
            "client_secret": "vsk_wrong",
        }
        answers = burst(40, lambda i: http.post("/portal/signin", data=form))
    # Ten failures per account per 15 minutes (the portal's limit): the rest wait.
    assert statuses(answers) == Counter({401: 10, 429: 30})
