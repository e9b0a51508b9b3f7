"""Master keys in a hardware security module, through PKCS#11 (python-pkcs11).

The master key is an AES-256 secret key object of the token (CKA_TOKEN, CKA_SENSITIVE, not
CKA_EXTRACTABLE): its value never leaves the HSM. Every wrap and unwrap is a CKM_AES_GCM
encrypt or decrypt performed by the token, with a 12-byte IV from ``os.urandom``, a 128-bit tag
and the caller's context as AAD — the blob layout is the one of ``viopay.crypto.keyring``.
AES-GCM rather than CKM_AES_KEY_WRAP_PAD: the keys we store are used in process memory (MACs,
envelopes), so they are data to the token, and GCM binds each blob to its context (AAD), which
KWP cannot. SoftHSM2, Thales Luna, Utimaco and AWS CloudHSM all implement CKM_AES_GCM.

A key's id in our blobs is ``"h" + hex(CKA_ID)`` (8 random bytes chosen when it is made).

Sessions: one logged-in session per process (``SessionPool``), its key handles cached, every
call under one lock (python-pkcs11 initialises the library for a single-threaded caller).
Worker processes have a session each. The charge path does not reach the HSM once a terminal's
keys are unwrapped: they are cached per process (``viopay.keysets.service``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from viopay_device.protocol.errors import EnvelopeNotOpened

ID_PREFIX = "h"
_ID_BYTES = 8


class HsmError(RuntimeError):
    """The HSM could not be used (module, token, PIN or key): the message says which setting."""


def _pkcs11() -> Any:
    try:
        import pkcs11
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise HsmError("python-pkcs11 is not installed") from exc
    return pkcs11


@dataclass
class _Slot:
    session: Any
    handles: dict[bytes, Any] = field(default_factory=dict)


#: python-pkcs11 calls C_Initialize with no arguments, which tells the library that the
#: application does not call it from several threads at once (SoftHSM2 then runs without
#: mutexes, and crashes if it is). Every call of this process goes through this lock.
_CALLS = threading.RLock()


class SessionPool:
    """The token's logged-in session of this process, lent one operation at a time.

    One session per process: PKCS#11 calls of one process are serialised (``_CALLS``), so more
    sessions would not run more at once; server worker processes each have their own session
    and run in parallel. What keeps the HSM off the charge path is the per-process cache of
    unwrapped key-set keys (``viopay.keysets.service``), not more sessions.
    """

    def __init__(self, *, module: str, token_label: str, pin: str) -> None:
        pkcs11 = _pkcs11()
        with _CALLS:
            try:
                lib = pkcs11.lib(module)
            except Exception as exc:
                raise HsmError(
                    f"VIOPAY_HSM_MODULE: cannot load the PKCS#11 library {module!r} ({exc})"
                ) from None
            try:
                self._token = lib.get_token(token_label=token_label)
            except Exception:
                raise HsmError(
                    f"VIOPAY_HSM_TOKEN: no token labelled {token_label!r} in {module}"
                ) from None
            self.token_label = token_label
            try:
                session = self._token.open(user_pin=pin, rw=True)
            except Exception as exc:
                name = type(exc).__name__
                if "Pin" in name:
                    raise HsmError(f"VIOPAY_HSM_PIN: the token refused the PIN ({name})") from None
                raise HsmError(f"cannot open a session on token {token_label!r} ({name})") from None
        self._slot: _Slot | None = _Slot(session)

    @contextlib.contextmanager
    def slot(self) -> Iterator[_Slot]:
        with _CALLS:
            if self._slot is None:
                raise HsmError(f"the session on token {self.token_label!r} is closed")
            yield self._slot

    def handle(self, slot: _Slot, cka_id: bytes) -> Any:
        found = slot.handles.get(cka_id)
        if found is None:
            pkcs11 = _pkcs11()
            found = next(
                iter(
                    slot.session.get_objects(
                        {
                            pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
                            pkcs11.Attribute.ID: cka_id,
                        }
                    )
                ),
                None,
            )
            if found is None:
                raise LookupError(cka_id.hex())
            slot.handles[cka_id] = found
        return found

    def find_ids(self, *, label: str | None = None) -> list[bytes]:
        """CKA_IDs of the AES secret keys of the token (with ``label``, those labelled so)."""
        pkcs11 = _pkcs11()
        template: dict[Any, Any] = {
            pkcs11.Attribute.CLASS: pkcs11.ObjectClass.SECRET_KEY,
            pkcs11.Attribute.KEY_TYPE: pkcs11.KeyType.AES,
        }
        if label is not None:
            template[pkcs11.Attribute.LABEL] = label
        with self.slot() as slot:
            return [bytes(obj[pkcs11.Attribute.ID]) for obj in slot.session.get_objects(template)]

    def label_of(self, cka_id: bytes) -> str:
        with self.slot() as slot:
            return str(self.handle(slot, cka_id).label)

    def generate(self, label: str) -> bytes:
        """Make a non-extractable AES-256 key on the token; its new CKA_ID."""
        pkcs11 = _pkcs11()
        cka_id = os.urandom(_ID_BYTES)
        a = pkcs11.Attribute
        with self.slot() as slot:
            slot.session.generate_key(
                pkcs11.KeyType.AES,
                256,
                label=label,
                id=cka_id,
                store=True,
                template={
                    a.TOKEN: True,
                    a.PRIVATE: True,
                    a.SENSITIVE: True,
                    a.EXTRACTABLE: False,
                    a.ENCRYPT: True,
                    a.DECRYPT: True,
                    a.WRAP: False,
                    a.UNWRAP: False,
                    a.SIGN: False,
                    a.VERIFY: False,
                    a.DERIVE: False,
                },
            )
        return cka_id

    def destroy(self, cka_id: bytes) -> None:
        """Destroy the key object."""
        with self.slot() as slot:
            self.handle(slot, cka_id).destroy()
            slot.handles.pop(cka_id, None)

    def close(self) -> None:
        with _CALLS:
            if self._slot is not None:
                with contextlib.suppress(Exception):
                    self._slot.session.close()
                self._slot = None


class HsmMasterKey:
    """A master key object of the token; AES-GCM performed by the token."""

    kind = "hsm"

    def __init__(self, pool: SessionPool, cka_id: bytes) -> None:
        self._pool = pool
        self.cka_id = bytes(cka_id)
        self.key_id = ID_PREFIX + self.cka_id.hex()

    def __repr__(self) -> str:
        return f"HsmMasterKey({self.key_id} on {self._pool.token_label!r})"

    def _params(self, iv: bytes, aad: bytes) -> tuple[Any, Any]:
        pkcs11 = _pkcs11()
        from pkcs11.mechanisms import GCMParams

        return pkcs11.Mechanism.AES_GCM, GCMParams(iv, aad, 128)

    def seal(self, iv: bytes, plaintext: bytes, aad: bytes) -> bytes:
        mechanism, param = self._params(iv, aad)
        with self._pool.slot() as slot:
            out: bytes = self._pool.handle(slot, self.cka_id).encrypt(
                plaintext, mechanism=mechanism, mechanism_param=param
            )
            return bytes(out)

    def open(self, iv: bytes, ciphertext: bytes, aad: bytes) -> bytes:
        mechanism, param = self._params(iv, aad)
        with self._pool.slot() as slot:
            try:
                key = self._pool.handle(slot, self.cka_id)
            except LookupError:
                raise EnvelopeNotOpened("decryption failed") from None
            try:
                out: bytes = key.decrypt(ciphertext, mechanism=mechanism, mechanism_param=param)
            except Exception:
                # A wrong tag is CKR_ENCRYPTED_DATA_INVALID (or a general error on SoftHSM2):
                # one error for every failure, as for the software key.
                raise EnvelopeNotOpened("decryption failed") from None
            return bytes(out)


def parse_key_id(key_id: str) -> bytes | None:
    """The CKA_ID of an HSM key id ("h" + hex), else None."""
    if not key_id.startswith(ID_PREFIX):
        return None
    try:
        return bytes.fromhex(key_id[len(ID_PREFIX) :])
    except ValueError:
        return None


def find_master_key(pool: SessionPool, label: str) -> HsmMasterKey:
    """The one AES key labelled ``label`` on the token; HsmError if none or several."""
    ids = pool.find_ids(label=label)
    if not ids:
        raise HsmError(
            f"VIOPAY_HSM_KEY_LABEL: no AES key labelled {label!r} on token "
            f"{pool.token_label!r}: make one with `viopay keys init-hsm`, or, after a "
            "rotation, set it to the new key's label (printed by `viopay keys rotate-master`)"
        )
    if len(ids) > 1:
        raise HsmError(
            f"VIOPAY_HSM_KEY_LABEL: {len(ids)} keys labelled {label!r} on token "
            f"{pool.token_label!r}; labels must be unique"
        )
    return HsmMasterKey(pool, ids[0])
