"""``viopay.db.unsaved``: a mapped instance made without attribute events (the charge and intent
rows of the hot path, written with Core) reads back exactly what ``__init__`` would have given,
column by column, and refuses a name the class does not have."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect

from viopay.db import Base, unsaved
from viopay.payments.models import Charge, ChargeStatus, EntryMode, IntentKind, PaymentIntent

NOW = datetime(2026, 12, 6, 11, 30, tzinfo=UTC)
CHARGE = {
    "charge_id": "ch_1",
    "terminal_id": "TID-000001",
    "merchant_id": "mer_1",
    "device_id": "POS-00000001",
    "status": ChargeStatus.approved,
    "amount": 1250,
    "tip_amount": 0,
    "currency": "USD",
    "entry_mode": EntryMode.chip,
    "card_brand": "visa",
    "card_last4": "1111",
    "created_at": NOW,
    "updated_at": NOW,
}


@pytest.mark.parametrize(
    ("cls", "values"),
    [
        (Charge, CHARGE),
        (
            PaymentIntent,
            {"intent_id": "pi_1", "kind": IntentKind.charge, "request": {"amount": 1}},
        ),
    ],
)
def test_an_unsaved_row_reads_as_one_made_by_init(
    cls: type[Base], values: dict[str, object]
) -> None:
    made: Base = unsaved(cls, **values)
    built = cls(**values)
    columns = [c.key for c in cls.__mapper__.columns]
    assert {k: getattr(made, k) for k in columns} == {k: getattr(built, k) for k in columns}
    assert all(getattr(made, k) == v for k, v in values.items())
    assert any(getattr(made, k) is None for k in columns)  # the ones not given, as __init__'s
    assert isinstance(made, cls) and inspect(made).transient


def test_a_name_the_class_does_not_have_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Charge has no attributes \['amout'\]"):
        unsaved(Charge, charge_id="ch_1", amout=5)
