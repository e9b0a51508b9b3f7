"""Merchants, their members, their config and the audit trail."""
