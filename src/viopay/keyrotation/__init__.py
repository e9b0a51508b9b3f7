"""The online master-key rotation: every table of wrapped keys re-wrapped under a new master key
(above ``masterkeys``, which the runtime imports, so that no import cycle runs through it)."""
