"""Sans-IO protocol state machines and wire messages (no I/O, no clock, no global RNG)."""
