"""POS devices: provisioning, identity keys, pairing codes, terminals and lifecycle."""
