"""Charges, refunds, idempotency and the payment processors (PROTOCOL §4)."""
