"""The simulator: a seeded, drifting stream of :class:`SimRequest`.

Requests are drawn in fixed blocks of :data:`BLOCK` from one
``numpy.random.Generator`` (one seed, one generator), vectorised over the
block, so request ``i`` of a seed is the same however the caller slices the
stream (``stream(10)`` twice == ``stream(20)`` once). The latent model is
documented in :mod:`stopbandit.sim.config`.

Drift: :class:`~stopbandit.sim.config.DomainShift` entries of the config change
the domain mix and the difficulty from a request index on; a
:class:`~stopbandit.sim.config.Degradation` (from the config or added with
:meth:`Simulator.degrade`) lowers one domain's EM from an index on. Degradation
is applied as requests are handed out, from a uniform drawn with the block, so
adding one never changes any other request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.special import betaincinv, expit, logit, ndtri

from stopbandit import validation
from stopbandit.errors import ConfigError
from stopbandit.sim.answers import REFERENCE, answer_text
from stopbandit.sim.config import Degradation, SimConfig
from stopbandit.sim.prompts import MAX_PROMPT_WORDS, Vocabulary, word_counts, word_kinds
from stopbandit.sim.request import SimRequest

BLOCK = 512
_NO_RELAPSE_PAD = 1  # relapse_offset = think_len + 1 means "never relapses"


@dataclass(frozen=True, slots=True)
class _Block:
    """Latent variables of BLOCK consecutive requests (arrays of shape (BLOCK,) unless said)."""

    start: int
    domain: np.ndarray
    difficulty: np.ndarray
    think_len: np.ndarray
    solvable: np.ndarray
    keep: np.ndarray  # uniform; a degraded item stays solvable when keep < em_factor
    settle: np.ndarray
    relapse: np.ndarray
    answer_tokens: np.ndarray
    base: np.ndarray
    n_words: np.ndarray
    words: np.ndarray  # (BLOCK, MAX_PROMPT_WORDS) word ids into the Vocabulary
    bounds: np.ndarray  # (BLOCK + 1,): request j's probes are flat[bounds[j]:bounds[j+1]]
    confidence: np.ndarray  # flat, per probe
    flips: np.ndarray  # flat, cumulative flips per probe (segment code of probe k)


class Simulator:
    """Seeded stream of simulated requests.

    >>> sim = Simulator(seed=7)
    >>> [r.request_id for r in sim.stream(2)]
    ['sim7-0', 'sim7-1']
    """

    def __init__(self, config: SimConfig | None = None, seed: int = 0) -> None:
        if config is None:
            config = SimConfig()
        if not isinstance(config, SimConfig):
            raise ConfigError(f"config must be a SimConfig, got {type(config).__name__}")
        validation.within(seed, "seed", low=0, integral=True, numpy=True, expected="a non-negative integer")
        self.config = config
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._block: _Block | None = None
        self._position = 0
        self._degradations: list[Degradation] = list(config.degradations)
        cfg = config
        self._weights = np.array([d.weight for d in cfg.domains], dtype=float)
        self._a = np.array([d.difficulty_a for d in cfg.domains])
        self._b = np.array([d.difficulty_b for d in cfg.domains])
        self._median = np.array([d.length_median for d in cfg.domains])
        self._bias = np.array([d.solve_bias for d in cfg.domains])
        self._tok_lo = np.array([d.answer_tokens_min for d in cfg.domains])
        self._tok_hi = np.array([d.answer_tokens_max for d in cfg.domains])
        self._states = self._schedule_states()
        self._vocab = Vocabulary([d.terms for d in cfg.domains])

    # -- public API -----------------------------------------------------------------

    @property
    def position(self) -> int:
        """Index of the next request :meth:`stream` hands out."""
        return self._position

    def stream(self, n: int) -> Iterator[SimRequest]:
        """Yield the next ``n`` requests (indices ``position … position + n − 1``)."""
        validation.within(n, "n", low=0, integral=True, numpy=True, expected="a non-negative integer")
        return self._iterate(int(n))  # validated now, not at the first next()

    def _iterate(self, n: int) -> Iterator[SimRequest]:
        for _ in range(n):
            req = self._request(self._position)
            self._position += 1
            yield req

    def take(self, n: int) -> list[SimRequest]:
        """The next ``n`` requests as a list."""
        return list(self.stream(n))

    def degrade(self, domain: str, *, from_request: int, em_factor: float) -> None:
        """Lower ``domain``'s EM by ``em_factor`` from request index ``from_request`` on.

        Requests already handed out cannot change, so ``from_request`` must be
        at least :attr:`position`.
        """
        d = Degradation(domain, from_request, em_factor)
        self.config.validate_degradation(d)
        if from_request < self._position:
            raise ConfigError(
                f"from_request must be >= {self._position} (requests already handed out), got {from_request}"
            )
        self._degradations.append(d)

    # -- drawing ----------------------------------------------------------------------

    def _schedule_states(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(start index, cumulative mix, difficulty shift) of each schedule period."""
        names = self.config.domain_names
        starts, mixes, shifts = [0], [self._weights / self._weights.sum()], [0.0]
        for s in self.config.schedule:
            mix = mixes[-1]
            if s.mix is not None:
                w = np.array([s.mix.get(n, 0.0) for n in names], dtype=float)
                mix = w / w.sum()
            shift = shifts[-1] if s.difficulty_shift is None else float(s.difficulty_shift)
            if s.at == 0:
                starts, mixes, shifts = [], [], []
            starts.append(s.at)
            mixes.append(mix)
            shifts.append(shift)
        cum = np.cumsum(np.array(mixes), axis=1)
        cum[:, -1] = 1.0
        return np.array(starts), cum, np.array(shifts)

    def _request(self, index: int) -> SimRequest:
        # The stream only moves forward one request at a time, so one block is live.
        block = self._block
        if block is None or index >= block.start + BLOCK:
            block = self._block = self._draw_block(0 if block is None else block.start + BLOCK)
        return self._materialise(block, index - block.start)

    def _draw_block(self, start: int) -> _Block:
        cfg, rng, n = self.config, self._rng, BLOCK
        idx = np.arange(start, start + n)
        # Fixed draw order: the per-request variates, then the per-probe ones.
        u_dom, u_diff, z_len, u_solve, u_keep, u_settle, u_over, u_over_at, z_req, u_tok = rng.random((10, n))
        z_len = _normal_from_uniform(z_len)
        z_req = _normal_from_uniform(z_req)
        base = rng.integers(10_000, 1_000_000, n)
        z_words = rng.standard_normal(n)
        u_kind = rng.random((n, MAX_PROMPT_WORDS))
        picks = rng.random((n, MAX_PROMPT_WORDS))

        starts, cum, shifts = self._states
        period = np.searchsorted(starts, idx, side="right") - 1
        dom = (u_dom[:, None] >= cum[period]).sum(axis=1)
        dom = np.minimum(dom, len(cfg.domains) - 1)
        x = betaincinv(self._a[dom], self._b[dom], u_diff)
        shift = shifts[period]
        if np.any(shift != 0):
            x = np.where(shift != 0, expit(logit(np.clip(x, 1e-9, 1 - 1e-9)) + shift), x)
        x = np.clip(x, 0.0, 1.0)

        length = self._median[dom] * np.exp(cfg.length_slope * x + cfg.length_sigma * z_len)
        think_len = np.clip(np.rint(length), cfg.min_think_tokens, cfg.max_think_tokens).astype(np.int64)
        solvable = u_solve < expit(cfg.solve_intercept - cfg.solve_slope * x + self._bias[dom])
        mean_phi = cfg.settle_base + cfg.settle_slope * x
        kappa = cfg.settle_concentration
        phi = betaincinv(mean_phi * kappa, (1.0 - mean_phi) * kappa, u_settle)
        settle = np.clip(np.ceil(phi * think_len), 1, think_len).astype(np.int64)
        over = solvable & (u_over < cfg.overthink_rate) & (settle < think_len)
        relapse_at = settle + 1 + np.floor(u_over_at * (think_len - settle)).astype(np.int64)
        relapse = np.where(over, np.minimum(relapse_at, think_len), think_len + _NO_RELAPSE_PAD)
        answer_tokens = self._tok_lo[dom] + np.floor(u_tok * (self._tok_hi[dom] - self._tok_lo[dom] + 1)).astype(
            np.int64
        )

        # Probes: k = 1..K with k·N < L.
        spacing = cfg.probe_spacing
        n_probes = (think_len - 1) // spacing
        bounds = np.concatenate(([0], np.cumsum(n_probes)))
        total = int(bounds[-1])
        eps = rng.standard_normal(total)
        u_flip = rng.random(total)
        owner = np.repeat(np.arange(n), n_probes)
        k = np.arange(total) - bounds[owner] + 1
        off = k * spacing
        xo, co, ro, lo = x[owner], settle[owner], relapse[owner], think_len[owner]
        noise = cfg.request_noise * z_req[owner] + cfg.probe_noise * eps
        pre = cfg.pre_intercept + cfg.pre_difficulty * xo + cfg.pre_progress * np.minimum(1.0, off / co)
        ramp = np.minimum(1.0, (off - co) / (cfg.post_ramp * lo))
        post = (
            cfg.post_intercept
            + cfg.post_gain * ramp
            - cfg.post_difficulty * xo
            - np.where(solvable[owner], 0.0, cfg.wrong_penalty)
        )
        settled = (off >= co) & (off < ro)
        conf = np.round(expit(np.where(settled, post, pre) + noise), 6)
        flipped = (u_flip < cfg.flip_rate).astype(np.int64)
        csum = np.cumsum(flipped)
        before = np.concatenate(([0], csum))[bounds[:-1]]
        flips = csum - before[owner]
        return _Block(
            start=start,
            domain=dom,
            difficulty=x,
            think_len=think_len,
            solvable=solvable,
            keep=u_keep,
            settle=settle,
            relapse=relapse,
            answer_tokens=answer_tokens,
            base=base,
            n_words=word_counts(x, z_words, cfg.prompt_base_words, cfg.prompt_difficulty_words),
            words=self._vocab.word_ids(dom, word_kinds(x, u_kind), picks),
            bounds=bounds,
            confidence=conf,
            flips=flips,
        )

    def _materialise(self, block: _Block, j: int) -> SimRequest:
        cfg = self.config
        index = block.start + j
        spec = cfg.domains[int(block.domain[j])]
        solvable = bool(block.solvable[j])
        degraded = False
        if solvable:
            factor = 1.0
            for d in self._degradations:
                if d.domain == spec.name and index >= d.from_request:
                    factor *= d.em_factor
            if block.keep[j] >= factor:
                solvable, degraded = False, True
        lo, hi = int(block.bounds[j]), int(block.bounds[j + 1])
        conf = block.confidence[lo:hi].copy()
        conf.flags.writeable = False
        segments = np.concatenate(([0], block.flips[lo:hi]))
        segments.flags.writeable = False
        base = int(block.base[j])
        return SimRequest(
            request_id=f"sim{self.seed}-{index}",
            index=index,
            prompt=self._vocab.prompt(spec.name, block.words[j], int(block.n_words[j])),
            domain=spec.name,
            difficulty=float(block.difficulty[j]),
            think_len=int(block.think_len[j]),
            reference=answer_text(base, REFERENCE, spec.answer_style),
            solvable=solvable,
            degraded=degraded,
            settle_offset=int(block.settle[j]),
            relapse_offset=int(block.relapse[j]),
            answer_tokens=int(block.answer_tokens[j]),
            probe_spacing=cfg.probe_spacing,
            probe_confidence=conf,
            segment_answer=segments,
            answer_base=base,
            answer_style=spec.answer_style,
        )


def _normal_from_uniform(u: np.ndarray) -> np.ndarray:
    """Standard normal variates from uniforms (inverse CDF), keeping the draw layout fixed."""
    return ndtri(np.clip(u, 1e-12, 1 - 1e-12))


__all__ = ["BLOCK", "Simulator"]
