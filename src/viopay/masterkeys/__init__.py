"""The master keys that wrap every key at rest: which ones exist and in what state
(``master_keys``), the stored derived keys (``derived_keys``), and the online rotation."""
