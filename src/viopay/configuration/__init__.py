"""The terminal's configuration document (PROTOCOL §3.8): merchant settings, EMV defaults, schema."""
