"""Differential privacy: clipping, noise (continuous, discrete), ledger events, accountants.

Modules: ``noise`` (continuous Gaussian from a CSPRNG), ``discrete`` (exact discrete Gaussian,
Canonne-Kamath-Steinke 2020), ``fedavg`` (client-level clipping and noise shares), ``events``
(frozen mechanism values), ``ledger`` (hash-chained privacy ledger), ``accountants`` (RDP/PRV/PLD),
``budget`` (plan and per-round checks), ``dpsgd`` (record-level DP-SGD; imports torch lazily),
``report`` (per-bank and federation epsilon). The public facade is :mod:`securefl.privacy`.
"""
