"""CKKS backend over TenSEAL: parameters, contexts, chunked vectors, noise flooding.

The only package that imports ``tenseal``, always lazily inside functions, so ``import securefl``
stays fast. Modules: :mod:`params` (validated parameter sets, overflow bound), :mod:`context`
(secret
and public contexts; a public context carrying a secret key is rejected), :mod:`vectors` (chunked
encrypt / homomorphic sum / decrypt and the canonical ciphertext digest), :mod:`flooding`
(Li-Micciancio noise flooding before release).
"""
