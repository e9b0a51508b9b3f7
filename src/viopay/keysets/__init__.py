"""Key sets (PROTOCOL §3.6, §3.10): the TR-31 hierarchy delivered to a terminal, its life and rotation."""
