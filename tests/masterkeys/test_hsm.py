"""The master key in an HSM (SoftHSM2 through PKCS#11) and its online rotation (issue 12).

A fresh SoftHSM2 token per run, in a temporary folder (``SOFTHSM2_CONF``); the servers run on
PostgreSQL + Redis with the HSM key store: the whole PROTOCOL flow (activation, charges, a
refund) passes on two server processes, then a master-key rotation is killed halfway while a
terminal keeps charging, resumed, and every stored key is shown to open under the new key.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from support.helpers import (
    IN_CI,
    REDIS_URL,
    SEEN_SECRETS,
    Backend,
    ProvisionedDevice,
    Server,
    client_token,
    create_pg_database,
    drop_pg_database,
    expect_json,
    flush_redis_prefix,
    require_services,
    sdk_client,
)
from viopay.crypto.hsm import HsmMasterKey, SessionPool, find_master_key
from viopay.crypto.keyring import (
    Keyring,
    SoftwareMasterKey,
    blob_master_key_id,
    blob_prefix,
    key_check_value,
)
from viopay.crypto.wrapping import KeyWrapper, MasterKeyWrapper
from viopay_device import activate_device
from viopay_device.errors import DeviceError
from viopay_device.protocol.errors import EnvelopeNotOpened

MODULES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
LABEL = "viopay-master"
CARD = {"pan": "4242424242424242", "expiry": "3012"}
SEEN_SECRETS.add(CARD["pan"])


@dataclass
class SoftHsm:
    conf: Path
    module: str
    token: str
    pin: str

    @property
    def env(self) -> dict[str, str]:
        return {
            "SOFTHSM2_CONF": str(self.conf),
            "VIOPAY_HSM_MODULE": self.module,
            "VIOPAY_HSM_TOKEN": self.token,
            "VIOPAY_HSM_PIN": self.pin,
        }

    def pool(self) -> SessionPool:
        os.environ["SOFTHSM2_CONF"] = str(self.conf)
        return SessionPool(module=self.module, token_label=self.token, pin=self.pin)


def _unavailable(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message}: scripts/test.sh installs Debian's softhsm2")
    pytest.skip(message)


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> SoftHsm:
    """A fresh token in a temporary folder: its own softhsm2.conf and token directory."""
    util = shutil.which("softhsm2-util")
    module = next((m for m in MODULES if Path(m).exists()), None)
    if util is None or module is None:
        _unavailable("SoftHSM2 is not installed")
    assert util is not None and module is not None
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\n"
        "log.level = ERROR\n"
    )
    pin = secrets.token_hex(8)
    SEEN_SECRETS.add(pin)
    token = f"viopay-{secrets.token_hex(3)}"
    subprocess.run(
        [util, "--init-token", "--free", "--label", token, "--pin", pin, "--so-pin", pin + "so"],
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        check=True,
        capture_output=True,
        timeout=60,
    )
    return SoftHsm(conf, module, token, pin)


# --- the key store itself ---------------------------------------------------------------------


def test_hsm_master_key_wraps_inside_the_token_and_never_leaves_it(softhsm: SoftHsm) -> None:
    import pkcs11

    pool = softhsm.pool()
    try:
        key = HsmMasterKey(pool, pool.generate("unit-test-key"))
        keyring: KeyWrapper = Keyring(key)
        secret = os.urandom(32)
        blob = keyring.wrap(secret, context="identity-key:POS-1:k1")
        assert blob.startswith(blob_prefix(key.key_id)) and secret not in blob
        assert blob_master_key_id(blob) == key.key_id
        assert keyring.unwrap(blob, context="identity-key:POS-1:k1") == secret
        with pytest.raises(EnvelopeNotOpened):
            keyring.unwrap(blob, context="identity-key:POS-1:k2")
        tampered = blob[:-1] + bytes([blob[-1] ^ 1])
        with pytest.raises(EnvelopeNotOpened):
            keyring.unwrap(tampered, context="identity-key:POS-1:k1")
        # Two wraps of one key differ (random IV); the KCV is stable and names the key.
        assert keyring.wrap(secret, context="c") != keyring.wrap(secret, context="c")
        assert key_check_value(key) == key_check_value(HsmMasterKey(pool, key.cka_id))
        with pool.slot() as slot:
            handle = pool.handle(slot, key.cka_id)
            assert handle[pkcs11.Attribute.EXTRACTABLE] is False
            assert handle[pkcs11.Attribute.SENSITIVE] is True
            with pytest.raises(pkcs11.exceptions.AttributeSensitive):
                handle[pkcs11.Attribute.VALUE]
        # Another token key cannot open it; a software key cannot either.
        other = HsmMasterKey(pool, pool.generate("unit-test-other"))
        forged = blob_prefix(other.key_id) + blob[len(blob_prefix(key.key_id)) :]
        with pytest.raises(EnvelopeNotOpened):
            Keyring(other).unwrap(forged, context="identity-key:POS-1:k1")
        # Threads share the session: every PKCS#11 call of the process is serialised.
        failures: list[BaseException] = []

        def hammer() -> None:
            try:
                for _ in range(50):
                    value = os.urandom(32)
                    assert keyring.unwrap(keyring.wrap(value, context="t"), context="t") == value
            except BaseException as exc:  # reported below
                failures.append(exc)

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not failures
        pool.destroy(other.cka_id)
        pool.destroy(key.cka_id)
        assert not pool.find_ids(label="unit-test-key")
    finally:
        pool.close()


def test_keyring_opens_first_format_blobs_of_its_software_key() -> None:
    raw = os.urandom(32)
    legacy = MasterKeyWrapper(raw).wrap(b"k" * 32, context="key:abc")
    keyring = Keyring(SoftwareMasterKey(raw))
    assert blob_master_key_id(legacy) is None
    assert keyring.unwrap(legacy, context="key:abc") == b"k" * 32
    rewrapped = keyring.rewrap(legacy, context="key:abc")
    assert blob_master_key_id(rewrapped) == keyring.active.key_id
    assert keyring.unwrap(rewrapped, context="key:abc") == b"k" * 32
    with pytest.raises(EnvelopeNotOpened):
        Keyring(SoftwareMasterKey(os.urandom(32))).unwrap(legacy, context="key:abc")


# --- the protocol on PostgreSQL + Redis with the HSM key store ---------------------------------


@dataclass
class Stack:
    backend: Backend
    db_name: str
    servers: list[Server]
    admin: httpx.Client
    softhsm: SoftHsm


@pytest.fixture(scope="module")
def stack(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_services()
    tag = secrets.token_hex(4)
    db_name = f"viopay_test_hsm_{tag}"
    create_pg_database(db_name)
    env = {
        "VIOPAY_DATA_DIR": str(tmp_path_factory.mktemp("viopay-hsm")),
        "VIOPAY_LOG_LEVEL": "debug",
        "VIOPAY_LOG_JSON": "true",
        "VIOPAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{db_name}",
        "VIOPAY_REDIS_URL": REDIS_URL,
        "VIOPAY_REDIS_PREFIX": f"viopay_test_{tag}:",
        "VIOPAY_HSM_KEY_LABEL": LABEL,
        "VIOPAY_MASTER_KEY_REFRESH_SECONDS": "0.3",
        **softhsm.env,
    }
    backend = Backend("postgres-hsm", env)
    made = backend.cli("keys", "init-hsm")
    assert made["label"] == LABEL and made["key_id"].startswith("h")
    servers: list[Server] = []
    try:
        for name in ("a", "b"):
            servers.append(Server(backend, tmp_path_factory.mktemp(f"server-hsm-{name}"), name))
        client = backend.cli("client", "create", "--admin")
        SEEN_SECRETS.add(client["client_secret"])
        token = client_token(servers[0].url, client["client_id"], client["client_secret"])
        with httpx.Client(
            base_url=servers[0].url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as admin:
            yield Stack(backend, db_name, servers, admin, softhsm)
    finally:
        for server in servers:
            server.stop()
        flush_redis_prefix(env["VIOPAY_REDIS_PREFIX"])
        drop_pg_database(db_name)


def _provision(stack: Stack) -> ProvisionedDevice:
    device_id = f"POS-{secrets.token_hex(4).upper()}"
    created = expect_json(stack.admin.post("/admin/devices", json={"device_id": device_id}), 201)
    SEEN_SECRETS.add(created["identity_secret"])
    return ProvisionedDevice(created["device_id"], created["key_id"], created["identity_secret"])


def _merchant(stack: Stack) -> httpx.Client:
    merchant = expect_json(stack.admin.post("/admin/merchants", json={"name": "HSM Coffee"}), 201)
    client = expect_json(
        stack.admin.post(
            "/admin/clients", json={"merchant_id": merchant["merchant_id"], "role": "owner"}
        ),
        201,
    )
    SEEN_SECRETS.add(client["client_secret"])
    url = stack.servers[0].url
    token = client_token(url, client["client_id"], client["client_secret"])
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    expect_json(http.post("/session/initiate", json={"merchant_id": merchant["merchant_id"]}), 201)
    return http


def _activated(stack: Stack, owner: httpx.Client, server: Server) -> Any:
    """A device provisioned, claimed by ``owner`` and activated through the SDK on ``server``."""
    client = sdk_client(server.url, _provision(stack))

    def on_step(report: Any) -> None:
        if report.name == "pairing_code":
            code = report.result.pairing_code
            expect_json(owner.post("/pos/claim", json={"pairing_code": code}), 200)

    result = activate_device(client, on_step=on_step, sleep=lambda _: None)
    assert result.activation.status == "activated"
    for key_set in (client.key_store.current, client.key_store.pending):
        if key_set is not None:
            for key_type in key_set.key_ids:
                SEEN_SECRETS.add(key_set.key(key_type).hex())
    return client


def _charge(client: Any, amount: int = 1250) -> Any:
    charge = client.charge(amount=amount, currency="USD", entry_mode="chip", card=CARD)
    assert charge.status == "approved", charge
    return charge


def _status(stack: Stack) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = stack.backend.cli("keys", "status")["master_keys"]
    return rows


def _protocol_flow_with_the_master_key_in_the_hsm(stack: Stack) -> None:
    owner = _merchant(stack)
    a, b = stack.servers
    with _activated(stack, owner, a) as device:
        first = _charge(device)
        assert first.amount == 1250
        refund = device.refund(first.id, amount=250)
        assert refund.charge_id == first.id and refund.amount == 250
        listed = expect_json(owner.get("/merchant/charges"), 200)["data"]
        assert first.id in {c["id"] for c in listed}
    # The second server process (same HSM token) serves a device activated on it too.
    with _activated(stack, owner, b) as device_b:
        _charge(device_b, 990)
    owner.close()
    # Every stored key is wrapped under the HSM key, and nothing else.
    (only,) = _status(stack)
    assert only["kind"] == "hsm" and only["state"] == "active" and only["location"] == LABEL
    assert only["blobs"] >= 2 * 6 + 2 + 1 + 4  # two key sets, two identity keys, issuer, derived


async def _blobs(db_name: str) -> dict[str, list[bytes]]:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{db_name}")
    try:
        return {
            table: [r[0] for r in await conn.fetch(f"SELECT {column} FROM {table}")]
            for table, column in (
                ("merchant_device_identity_keys", "secret_wrapped"),
                ("key_set_keys", "key_wrapped"),
                ("signing_keys", "private_wrapped"),
                ("derived_keys", "key_wrapped"),
            )
        }
    finally:
        await conn.close()


async def _active_key(db_name: str, location: str) -> str | None:
    conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{db_name}")
    try:
        value = await conn.fetchval(
            "SELECT key_id FROM master_keys WHERE state = 'active' AND location = $1", location
        )
        return None if value is None else str(value)
    finally:
        await conn.close()


async def _every_key_opens(stack: Stack, label: str) -> int:
    """Unwrap every stored key with its context, under the keys a fresh runtime configured with
    the HSM key ``label`` holds; key-set keys must match their KCV. Returns how many."""
    from sqlalchemy import select

    from viopay.keyrotation.service import TARGETS
    from viopay.runtime import build_runtime
    from viopay.settings import Settings
    from viopay_device.protocol.kcv import kcv_for

    mp = pytest.MonkeyPatch()
    for key, value in stack.backend.env.items():
        mp.setenv(key, value)
    mp.setenv("VIOPAY_HSM_KEY_LABEL", label)
    runtime = build_runtime(Settings())
    mp.undo()
    opened = 0
    try:
        async with runtime.sessions() as db:
            for target in TARGETS:
                for row in (await db.scalars(select(target.model))).all():
                    blob = getattr(row, target.column)
                    if blob is None:  # a webhook endpoint without a previous secret
                        continue
                    raw = runtime.wrapper.unwrap(blob, context=target.context(row))
                    if target.name == "key-set keys":
                        assert kcv_for(row.type, raw) == row.kcv
                    opened += 1
    finally:
        await runtime.close()
    return opened


class Charger(threading.Thread):
    """A terminal charging in a loop, recording every failure, until stopped."""

    def __init__(self, client: Any) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.stop = threading.Event()
        self.approved = 0
        self.failures: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                _charge(self.client, 500 + self.approved)
                self.approved += 1
            except (DeviceError, AssertionError, httpx.HTTPError) as exc:
                self.failures.append(exc)
            self.stop.wait(0.05)


def _rotation_killed_halfway_resumes_and_loses_no_key(stack: Stack, tmp_path: Path) -> None:
    owner = _merchant(stack)
    a, b = stack.servers
    devices = [_activated(stack, owner, server) for server in (a, b, a)]
    old_id = find_master_key_id(stack.softhsm, LABEL)
    charger = Charger(_activated(stack, owner, b))
    charger.start()
    before = asyncio.run(_blobs(stack.db_name))
    total = sum(len(v) for v in before.values())
    new_label = f"{LABEL}-2"
    errors = (tmp_path / "rotate.err").open("wb")
    rotate = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "viopay",
            "keys",
            "rotate-master",
            "--to-hsm",
            "--label",
            new_label,
            "--batch-size",
            "1",
            "--pace",
            "0.2",
            "--json",
        ],
        env={**os.environ, **stack.backend.env},
        stdout=subprocess.DEVNULL,
        stderr=errors,
    )
    try:
        # Kill it once some keys, but not all, are under the new key.
        new_id = None
        moved = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and rotate.poll() is None:
            new_id = new_id or asyncio.run(_active_key(stack.db_name, new_label))
            if new_id is not None:
                blobs = asyncio.run(_blobs(stack.db_name))
                moved = sum(
                    blob.startswith(blob_prefix(new_id)) for v in blobs.values() for blob in v
                )
                if moved >= total // 3:
                    break
            time.sleep(0.05)
        assert rotate.poll() is None, (tmp_path / "rotate.err").read_text()
        rotate.send_signal(signal.SIGKILL)
        rotate.wait(timeout=30)
    finally:
        if rotate.poll() is None:
            rotate.kill()
            rotate.wait(timeout=30)
        errors.close()
    assert new_id is not None
    halfway = asyncio.run(_blobs(stack.db_name))
    under_new = sum(b.startswith(blob_prefix(new_id)) for v in halfway.values() for b in v)
    assert 0 < under_new < sum(len(v) for v in halfway.values())
    states = {row["key_id"]: row["state"] for row in _status(stack)}
    assert states == {old_id: "retiring", new_id: "active"}
    # Halfway: both servers serve every terminal (keys under either master key) and activate a
    # new device, whose keys are wrapped under the new key.
    for device in devices:
        _charge(device)
    late = _activated(stack, owner, b)
    _charge(late)
    devices.append(late)
    # Resume: the same command without a target finishes the rotation.
    resumed = stack.backend.cli("keys", "rotate-master", "--batch-size", "5")
    assert resumed["key_id"] == new_id and resumed["destroyed"] == [old_id]
    charger.stop.set()
    charger.join(timeout=60)
    assert not charger.failures, charger.failures
    assert charger.approved > 0
    charger.client.close()
    # No key lost: every stored key is under the new key and opens (key-set keys by their KCV);
    # the old key is gone from the token.
    after = asyncio.run(_blobs(stack.db_name))
    assert all(blob_master_key_id(b) == new_id for v in after.values() for b in v)
    assert sum(len(v) for v in after.values()) >= total
    assert asyncio.run(_every_key_opens(stack, new_label)) == sum(len(v) for v in after.values())
    pool = stack.softhsm.pool()
    try:
        assert pool.find_ids(label=LABEL) == []
        assert len(pool.find_ids(label=new_label)) == 1
    finally:
        pool.close()
    states = {row["key_id"]: (row["state"], row["blobs"]) for row in _status_with_label(stack)}
    assert states[old_id] == ("destroyed", 0) and states[new_id][0] == "active"
    # The servers (started with the old label) keep serving every device, old and new, and a
    # device attests again with its identity key (re-wrapped under the new key).
    for device in devices:
        _charge(device)
        assert device.attest().token
        device.close()
    owner.close()


def find_master_key_id(softhsm: SoftHsm, label: str) -> str:
    pool = softhsm.pool()
    try:
        return find_master_key(pool, label).key_id
    finally:
        pool.close()


def _status_with_label(stack: Stack) -> list[dict[str, Any]]:
    """``keys status`` once the configured label's key was destroyed: configured by the new
    label, as the rotation's closing message asks."""
    done = subprocess.run(
        [sys.executable, "-m", "viopay", "keys", "status", "--json"],
        env={**os.environ, **stack.backend.env, "VIOPAY_HSM_KEY_LABEL": f"{LABEL}-2"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows: list[dict[str, Any]] = orjson.loads(done.stdout)["master_keys"]
    return rows


def test_the_protocol_flow_then_a_rotation_killed_halfway(stack: Stack, tmp_path: Path) -> None:
    """One test, in this order whatever the suite's random order: the flow with the master key
    in the HSM, then a rotation killed halfway and resumed (which changes the token's keys, so
    it must come after the flow on the shared stack)."""
    _protocol_flow_with_the_master_key_in_the_hsm(stack)
    _rotation_killed_halfway_resumes_and_loses_no_key(stack, tmp_path)
