"""Webhooks (PROTOCOL §7): merchant endpoints, a transactional outbox of deliveries, workers."""
