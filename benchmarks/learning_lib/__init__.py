"""The machinery of ``benchmarks/learning.py``: seeded streams, policy runners, metrics, plots.

* :mod:`.streams` -- one simulator stream per seed, with every arm's outcome
  (``outcome_table``) and the λ in force at each request;
* :mod:`.runners` -- each policy played on a stream, returning a
  :class:`~.runners.Trajectory` (the arm, EM and tokens of every request);
  the stopbandit policies run through the real ``Selector`` on a real SQLite
  replay store;
* :mod:`.prototypes` -- candidate library changes tried from the benchmark
  (exploration rules, learner settings), never edits to ``stopbandit/``;
* :mod:`.metrics` -- windowed rewards, oracle-gap fractions, requests-to-target,
  recovery after drift;
* :mod:`.plots` -- the learning-curve and drift PNGs (matplotlib, Agg).
"""

from __future__ import annotations

__all__: list[str] = []
