"""Differential privacy: clipping, noise (continuous and discrete), ledger events and accountants."""
