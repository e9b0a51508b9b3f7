"""Activation: attest, key sets, config, terminal parameters, activate (PROTOCOL §3.5-§3.10)."""
