"""Synthetic chain-of-thought testbed: a small char-level transformer whose early stopping really costs EM on hard items.

``python -m benchmarks.testbed.train`` trains and saves the model under
``benchmarks/testbed/out/``; ``python -m benchmarks.testbed.run_arms`` runs
static arms on held-out items. :func:`benchmarks.testbed.run_arms.run_items`
is the hook a Selector loop calls; ``python -m benchmarks.testbed.end_to_end``
is that loop (a real Selector + the decoder, learned policy vs static arms).
"""

__all__: list[str] = []
