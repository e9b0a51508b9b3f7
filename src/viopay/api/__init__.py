"""HTTP routers that compose several domains (devices, merchants, events): the layer above the
domain packages, so that no domain imports another's routes (docs/architecture.md)."""
