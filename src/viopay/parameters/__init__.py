"""Terminal parameters (PROTOCOL §3.9): the chunked, gzip parameter files and their defaults."""
