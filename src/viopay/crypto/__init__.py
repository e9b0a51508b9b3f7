"""The server's own cryptography: ``wrapping`` (keys at rest under the master key),
``canonical`` (RFC 8785 JSON for idempotency fingerprints) and ``webhooks`` (Standard Webhooks
signatures, §7).

The wire protocol's cryptography (signatures, envelopes, key blocks, KCVs, key transport, PIN
blocks) is shared with terminals and lives in the device SDK's distribution:
:mod:`viopay_device.protocol`.
"""
