"""Online λ control: dual ascent on λ (a PI controller) that holds a token budget or an EM floor.

Why λ is the thing to move: the served policy maximises ``EM − λ·tokens/token_scale``
per request, so λ is the Lagrange multiplier of the token constraint in

    max E[EM]  subject to  E[tokens] ≤ B.

The dual of that problem is minimised by projected subgradient steps on λ
along the constraint violation, ``λ ← [λ + η·(T̄ − B)]₊`` (dual ascent;
Boyd & Vandenberghe, *Convex Optimization*, §5; the same multiplier update
drives bandits with budgets, Agrawal & Devanur, EC 2014). For an EM floor,
``min E[tokens] subject to E[EM] ≥ F``, the violation is ``F − ĒM`` and λ moves
the other way (a lower λ buys EM with tokens).

Every ``interval`` outcomes the controller takes one step from the outcomes
observed since the previous step (a fresh batch, so a step never reacts to
outcomes it has already acted on):

    e_t = (T̄_t − B*) / B*                 token budget (relative error)
    e_t = (F* − ĒM_t) / F*                EM floor (relative error)
    Δλ  = s · (k_i·e_t + k_p·(e_t − e_{t−1}))      s = +1 budget, −1 floor

(velocity-form PI: ``k_p = 0`` is plain dual ascent; the velocity form cannot
wind up against the clamp). The step is bounded, ``|Δλ| ≤ max_step``, λ is
clamped to ``[lam_min, lam_max]``, and a move smaller than ``min_step`` is not
made (no store churn). A controller pinned at a bound while its error keeps
pushing past it reports ``saturated`` ("high": the budget is not reachable
even at ``lam_max``; "low": the floor is not reachable even at ``lam_min``).

Setpoints sit on the safe side of the target: ``B* = B − margin`` (default
margin 0) and ``F* = F + margin``. The floor's default margin is
``3·sqrt(F(1−F)/2000)``: three standard errors of the EM of a 2,000-request
window, so that no 2,000-request window falls below the floor by more than a
point (the acceptance measure of ``benchmarks/lambda_control.py``): an EM held
exactly at a closer setpoint misses that often by noise alone. The price is a
few per cent more tokens (``docs/benchmarks.md``, "Floor margin"). Pass
``margin`` to trade back.

Model-based feed-forward (``feedforward=True``; :mod:`stopbandit.control.feedforward`).
The serving wrapper passes the policy's predicted response to λ over its last
``contexts`` served contexts. Each step then estimates the model's relative
bias on the batch, ``r_t = (X̄_t − X̂_t)/X*`` (X = tokens or EM, X̂ = the
model's prediction for the same contexts at the λ in force), smooths it,
``b ← b + bias_gain·(r_t − b)``, and moves λ toward the λ the model says
reaches ``X*·(1 − b)`` (bisection), with the same step bound, clamp and
deadband. A change of the traffic mix moves the model's answer as soon as
the contexts change; only the level comes from (noisy) outcomes. While the
model is missing, has too few contexts, or its bias is beyond ``trust``
(untrained heads), and for the first ``model_warmup`` outcomes (the heads
and their calibration move fast while the policy is new), the step is the PI
step above.

Domain-mix feed-forward (``mix_feedforward``, on by default;
:mod:`stopbandit.control.mix`). Each outcome comes with its request's
domain. The change of the recent domain mix (last ``mix_recent`` outcomes),
weighted by the per-domain means of the rolling window,
``Δm = Σ_d (w_d − w_d^ref)·m̄_d``, is the part of the error that the mix
alone explains. It is gated: while ``|Δm|`` against a reference mix stays
within ``mix_gate`` (4) standard deviations of its no-shift sampling noise,
nothing is added, so on steady traffic the controller is the PI controller
to the last digit (the mix's own noise would only make λ noisier). Once the
gate opens, the whole ``Δm`` since the reference is added at once, then
every further mix change step by step (``Δm_t = Σ_d (w_d,t − w_d,t−1)·m̄_d``)
for ``mix_hold`` outcomes, after which the mix of that moment becomes the
new reference (the λ already moved stays). A mix change adds
``s·k_mix·e_mix`` to the step, ``e_mix = Δm/B*`` (budget) or ``−Δm/F*``
(floor), ``k_mix`` the inverse of the plant's sensitivity
(:data:`DEFAULT_MIX_GAIN`). What the bound ``max_step`` cuts off is carried
to the next steps (dropped at a clamp, so nothing winds up), so a large
shift is still absorbed in full, at most ``max_step`` per step.

The controller is a pure object: it never touches a store. Feed it outcomes
(:meth:`LambdaController.observe`) and ask for a step with the λ in force
(:meth:`LambdaController.update`); :class:`~stopbandit.control.serving.ControlledSelector`
applies every move with ``Selector.set_lambda(value, reason=step.reason, who="controller")``,
so each one is stored in ``lambda_changes`` with the controller state in its reason.

>>> c = LambdaController(Target.token_budget(500), ControllerConfig(interval=2, ki=0.5, max_step=0.1))
>>> c.observe(1.0, 700)
False
>>> c.observe(0.0, 700)
True
>>> step = c.update(0.2)
>>> round(step.lam_after, 4), step.moved   # 40% over budget: +0.2 wanted, bounded to +0.1
(0.3, True)
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from typing import TYPE_CHECKING

from stopbandit.control.mix import MixTracker
from stopbandit.errors import ConfigError, require_positive_ints
from stopbandit import validation

if TYPE_CHECKING:  # the controller stays a pure object: no VW import for a type
    from stopbandit.control.feedforward import Response

TARGET_KINDS = ("token_budget", "em_floor")
DEFAULT_KI = {"token_budget": 0.3, "em_floor": 0.5}
"""Integral gain per step and unit relative error, by target kind (see ``benchmarks/lambda_control.py``).

Measured on the simulator: mean tokens fall by ~1.1 % and EM by ~0.4 % per
0.01 of λ around λ≈0.3–0.5, so a relative error of ``e`` is closed by
``Δλ ≈ 0.9·e`` (budget) or ``≈ 2.7·e`` (floor); the defaults close about a
third of it per step, which keeps the batch noise (±15 % tokens, ±7 % EM at
100 outcomes) from moving λ much. The default ``interval`` is 100 outcomes:
short enough that a domain-mix shift is absorbed within the 2,000-request
windows the targets are judged on, long enough that those windows stay as
quiet as with longer intervals (``docs/benchmarks.md``, "λ control").
"""
DEFAULT_MIX_GAIN = {"token_budget": 0.9, "em_floor": 2.5}
"""λ per unit relative mix error, by target kind: the inverse of the sensitivities quoted for :data:`DEFAULT_KI`.

A mix change that moves the expected mean by ``e`` (relative) is undone by
``Δλ ≈ e/1.1`` (tokens fall ~1.1 % per 0.01 of λ) or ``≈ e/0.4`` (EM falls
~0.4 % per 0.01 of λ). Unlike the PI gain this one can be the full inverse:
its input is a mix change, not a noisy outcome mean.
"""
FLOOR_MARGIN_WINDOW = 2000
FLOOR_MARGIN_Z = 3.0


@dataclass(frozen=True, slots=True)
class Target:
    """What the controller holds: ``token_budget`` (mean tokens ≤ value) or ``em_floor`` (EM ≥ value).

    ``margin``: distance of the setpoint from the target, on the safe side
    (fewer tokens / more EM), in the target's units; None = the default
    (0 for a budget, ``3·sqrt(F(1−F)/2000)`` for a floor).
    """

    kind: str
    value: float
    margin: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in TARGET_KINDS:
            raise ConfigError(f"target kind must be one of {list(TARGET_KINDS)}, got {self.kind!r}")
        v = validation.number(self.value, f"{self.kind}")
        if self.kind == "token_budget" and not v > 0:
            raise ConfigError(f"token_budget must be > 0 tokens, got {self.value!r}")
        if self.kind == "em_floor" and not 0 < v < 1:
            raise ConfigError(f"em_floor must be in (0, 1), got {self.value!r}")
        object.__setattr__(self, "value", v)
        if self.margin is not None:
            m = validation.number(self.margin, "target margin")
            if m < 0:
                raise ConfigError(f"target margin must be >= 0, got {self.margin!r}")
            if self.kind == "token_budget" and m >= v:
                raise ConfigError(f"target margin {m:g} must be below the token budget {v:g}")
            if self.kind == "em_floor" and v + m >= 1:
                raise ConfigError(f"em_floor {v:g} + margin {m:g} must be below 1")
            object.__setattr__(self, "margin", m)

    @classmethod
    def token_budget(cls, tokens: float, margin: float | None = None) -> Target:
        return cls("token_budget", tokens, margin)

    @classmethod
    def em_floor(cls, em: float, margin: float | None = None) -> Target:
        return cls("em_floor", em, margin)

    @property
    def effective_margin(self) -> float:
        if self.margin is not None:
            return self.margin
        if self.kind == "token_budget":
            return 0.0
        f = self.value
        return min(FLOOR_MARGIN_Z * math.sqrt(f * (1 - f) / FLOOR_MARGIN_WINDOW), (1 - f) / 2)

    @property
    def setpoint(self) -> float:
        """The value the controller steers to (target moved by the margin to its safe side)."""
        m = self.effective_margin
        return self.value - m if self.kind == "token_budget" else self.value + m

    @property
    def sign(self) -> int:
        """+1: a positive error raises λ (budget); −1: it lowers λ (floor)."""
        return 1 if self.kind == "token_budget" else -1

    def describe(self) -> str:
        return f"token_budget<={self.value:g}" if self.kind == "token_budget" else f"em_floor>={self.value:g}"


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """Step schedule and bounds. ``ki`` None: :data:`DEFAULT_KI` of the target kind.

    ``interval``: outcomes per step (the batch a step acts on). ``window``:
    outcomes in the rolling window reported in the state and in every step's
    reason. ``max_step``: bound of ``|Δλ|`` per step. ``min_step``: smaller
    moves are skipped. ``lam_min``/``lam_max``: the clamp.

    Model-based feed-forward (off by default): ``feedforward`` turns it on,
    ``contexts`` policy-served contexts define the traffic mix it solves for,
    ``calibration`` rewarded contexts calibrate the heads per domain,
    ``bias_gain`` smooths the model's remaining relative bias, ``trust`` is
    the largest bias it still steers with, and the first ``model_warmup``
    outcomes use the PI step.

    Domain-mix feed-forward (on by default: it absorbs a shift of the traffic
    mix at once; :mod:`stopbandit.control.mix`): ``mix_feedforward`` turns it on, ``mix_recent`` outcomes define the
    recent mix, ``mix_gain`` (None: :data:`DEFAULT_MIX_GAIN`) is λ per unit
    relative mix error, and a domain needs ``mix_min_n`` outcomes in the
    window for a mean of its own. ``mix_gate``: the feed-forward stays silent
    until the recent mix differs from a reference mix by more than
    ``mix_gate`` standard deviations of that difference under no shift (0:
    always on); it then applies the whole difference at once, follows every
    mix change for ``mix_hold`` outcomes, and takes the mix of that moment as
    the new reference (the λ it moved stays). With ``feedforward=True`` it is
    not used: the model already sees the mix through its contexts.
    """

    interval: int = 100
    ki: float | None = None
    kp: float = 0.0
    max_step: float = 0.05
    min_step: float = 0.001
    lam_min: float = 0.0
    lam_max: float = 2.0
    window: int = 2000
    feedforward: bool = False
    contexts: int = 500
    calibration: int = 4000
    bias_gain: float = 0.05
    trust: float = 0.25
    model_warmup: int = 2000
    mix_feedforward: bool = True
    mix_recent: int = 500
    mix_gain: float | None = None
    mix_min_n: int = 20
    mix_gate: float = 4.0
    mix_hold: int = 2000

    def __post_init__(self) -> None:
        if not validation.number(self.mix_gate, "controller.mix_gate") >= 0:
            raise ConfigError(f"controller.mix_gate must be >= 0, got {self.mix_gate!r}")
        if not isinstance(self.mix_feedforward, bool):
            raise ConfigError(f"controller.mix_feedforward must be true or false, got {self.mix_feedforward!r}")
        require_positive_ints("controller.", mix_recent=self.mix_recent, mix_min_n=self.mix_min_n,
                              mix_hold=self.mix_hold)
        if self.mix_gain is not None and not validation.number(self.mix_gain, "controller.mix_gain") >= 0:
            raise ConfigError(f"controller.mix_gain must be >= 0, got {self.mix_gain!r}")
        if not isinstance(self.feedforward, bool):
            raise ConfigError(f"controller.feedforward must be true or false, got {self.feedforward!r}")
        if not 0 < validation.number(self.bias_gain, "controller.bias_gain") <= 1:
            raise ConfigError(f"controller.bias_gain must be in (0, 1], got {self.bias_gain!r}")
        if not 0 < validation.number(self.trust, "controller.trust") < 1:
            raise ConfigError(f"controller.trust must be in (0, 1), got {self.trust!r}")
        validation.within(self.model_warmup, "controller.model_warmup", low=0, integral=True)
        require_positive_ints("controller.", interval=self.interval, window=self.window, contexts=self.contexts,
                              calibration=self.calibration)
        if self.ki is not None and not validation.number(self.ki, "controller.ki") >= 0:
            raise ConfigError(f"controller.ki must be >= 0, got {self.ki!r}")
        if not validation.number(self.kp, "controller.kp") >= 0:
            raise ConfigError(f"controller.kp must be >= 0, got {self.kp!r}")
        if not validation.number(self.max_step, "controller.max_step") > 0:
            raise ConfigError(f"controller.max_step must be > 0, got {self.max_step!r}")
        if not 0 <= validation.number(self.min_step, "controller.min_step") <= self.max_step:
            raise ConfigError(f"controller.min_step must be in [0, max_step={self.max_step:g}], got {self.min_step!r}")
        lo, hi = validation.number(self.lam_min, "controller.lam_min"), validation.number(self.lam_max, "controller.lam_max")
        if lo < 0 or hi <= lo:
            raise ConfigError(f"controller λ range must satisfy 0 <= lam_min < lam_max, got [{lo:g}, {hi:g}]")


@dataclass(frozen=True, slots=True)
class Step:
    """One controller step: the λ it found, the λ it asks for, and why (``reason`` is what gets stored)."""

    lam_before: float
    lam_after: float
    moved: bool
    error: float
    i_term: float
    p_term: float
    clamped: str | None
    batch_n: int
    batch_tokens: float
    batch_em: float
    window_n: int
    window_tokens: float
    window_em: float
    reason: str
    mode: str = "pi"  # "pi" or "feedforward" (the model's λ, see the module docstring)
    lam_model: float | None = None  # the λ the model says reaches the bias-corrected setpoint
    model_bias: float | None = None  # smoothed relative bias of the model (b)
    mix_term: float = 0.0  # λ move the domain-mix feed-forward asked for at this step (mix_feedforward)
    mix_pending: float = 0.0  # what the step bound left of the mix moves, carried to the next steps


@dataclass(frozen=True, slots=True)
class ControllerState:
    """What the controller knows now (health and metrics read it)."""

    target: str
    target_value: float
    setpoint: float
    enabled: bool
    lam: float | None
    observed: int
    steps: int
    moves: int
    last_error: float | None
    window_n: int
    window_tokens: float | None
    window_em: float | None
    window_error: float | None
    saturated: str | None
    last_move_ts: float | None
    mode: str | None = None
    model_bias: float | None = None
    mix_shares: dict[str | None, float] | None = None  # recent domain mix (mix_feedforward), else None
    mix_pending: float = 0.0


class LambdaController:
    """Dual ascent / PI on λ toward a :class:`Target`. Thread-safe; never touches a store."""

    def __init__(self, target: Target, config: ControllerConfig | None = None) -> None:
        if not isinstance(target, Target):
            raise ConfigError(f"target must be a Target, got {type(target).__name__}")
        config = ControllerConfig() if config is None else config
        if not isinstance(config, ControllerConfig):
            raise ConfigError(f"config must be a ControllerConfig, got {type(config).__name__}")
        self.target = target
        self.config = config
        self.ki = DEFAULT_KI[target.kind] if config.ki is None else float(config.ki)
        self.enabled = True
        self._lock = threading.Lock()
        self._batch_n = 0
        self._batch_em = 0.0
        self._batch_tokens = 0.0
        self._win: deque[tuple[float, float]] = deque()
        self._win_em = 0.0
        self._win_tokens = 0.0
        self._observed = 0
        self._steps = 0
        self._moves = 0
        self._prev_error: float | None = None
        self._last_error: float | None = None
        self._lam: float | None = None
        self._saturated: str | None = None
        self._last_move_ts: float | None = None
        self._bias: float | None = None
        self._mode: str | None = None
        self.mix_gain = self._mix_gain(target)
        self._mix = MixTracker(config.window, config.mix_recent, config.mix_min_n) \
            if config.mix_feedforward and not config.feedforward else None
        self._mix_pending = 0.0
        self._mix_armed_at: int | None = None  # outcome count at which the gate opened (None: closed)

    def _mix_gain(self, target: Target) -> float:
        g = self.config.mix_gain
        return DEFAULT_MIX_GAIN[target.kind] if g is None else float(g)

    # -- feeding ------------------------------------------------------------------
    def observe(self, em: float, tokens: float, domain: str | None = None) -> bool:
        """Count one outcome (of a request of ``domain``); True when a step is due (call :meth:`update`).

        ``domain`` is used only by the domain-mix feed-forward.
        """
        em, tokens = float(em), float(tokens)
        with self._lock:
            if self._mix is not None:
                self._mix.add(domain, em, tokens)
            self._observed += 1
            self._batch_n += 1
            self._batch_em += em
            self._batch_tokens += tokens
            self._win.append((em, tokens))
            self._win_em += em
            self._win_tokens += tokens
            if len(self._win) > self.config.window:
                old_em, old_tok = self._win.popleft()
                self._win_em -= old_em
                self._win_tokens -= old_tok
            return self.enabled and self._batch_n >= self.config.interval

    # -- stepping -----------------------------------------------------------------
    def _error(self, em_mean: float, tokens_mean: float) -> float:
        sp = self.target.setpoint
        if self.target.kind == "token_budget":
            return (tokens_mean - sp) / sp
        return (sp - em_mean) / sp

    def update(self, lam: float, model: Response | None = None) -> Step | None:
        """One step from the λ in force, if ``interval`` outcomes arrived since the last one; else None.

        ``model``: the policy's predicted response to λ over its recent contexts,
        at the λ in force (used with ``feedforward=True``). The batch is consumed
        whether or not λ moves.
        """
        lam = validation.number(lam, "lam")
        cfg = self.config
        with self._lock:
            if not self.enabled or self._batch_n < cfg.interval:
                return None
            n = self._batch_n
            b_em, b_tok = self._batch_em / n, self._batch_tokens / n
            self._batch_n, self._batch_em, self._batch_tokens = 0, 0.0, 0.0
            err = self._error(b_em, b_tok)
            prev = err if self._prev_error is None else self._prev_error
            self._prev_error = err
            s = self.target.sign
            mode, lam_model, ff_note = "pi", None, ""
            if cfg.feedforward and model is not None:
                lam_model, ff_note = self._feedforward(model, n, b_em, b_tok)
            if lam_model is not None:
                mode = "feedforward"
                i_term, p_term = lam_model - lam, 0.0
            else:
                i_term = s * self.ki * err
                p_term = s * cfg.kp * (err - prev)
            mix_term, mix_note = self._mix_step()
            pending = self._mix_pending + mix_term
            self._mode = mode
            fb = max(-cfg.max_step, min(cfg.max_step, i_term + p_term))
            delta = max(-cfg.max_step, min(cfg.max_step, i_term + p_term + pending))
            wanted = lam + delta
            new = min(cfg.lam_max, max(cfg.lam_min, wanted))
            clamped = "lam_max" if wanted > cfg.lam_max else "lam_min" if wanted < cfg.lam_min else None
            if new >= cfg.lam_max and s * err > 0:
                self._saturated = "high"
            elif new <= cfg.lam_min and s * err < 0:
                self._saturated = "low"
            else:
                self._saturated = None
            moved = abs(new - lam) >= max(cfg.min_step, 1e-12)
            if not moved:
                new = lam
            if self._mix is not None:  # carry what the bound cut off; nothing past a clamp (no wind-up)
                used = min(max(new - lam - fb, min(0.0, pending)), max(0.0, pending))
                self._mix_pending = 0.0 if clamped else pending - used
            self._steps += 1
            self._last_error = err
            wn = len(self._win)
            w_em, w_tok = self._win_em / wn, self._win_tokens / wn
            if moved:
                self._moves += 1
                self._last_move_ts = time.time()
            self._lam = new
            step_terms = (f"model λ {lam_model:.4f}" if lam_model is not None
                          else f"I {i_term:+.4f}, P {p_term:+.4f}")
            reason = (
                f"controller {self.target.describe()} (setpoint {self.target.setpoint:.4g}): "
                f"last {n} outcomes tokens {b_tok:.1f} EM {b_em:.4f}; window {wn}: tokens {w_tok:.1f} EM {w_em:.4f}; "
                f"error {err:+.4f}; {ff_note}{mix_note}step {new - lam:+.4f} ({mode}: {step_terms}"
                f"{', bounded' if abs(i_term + p_term + pending) > cfg.max_step else ''}"
                f"{', clamped at ' + clamped if clamped else ''}); λ {lam:.4f} -> {new:.4f}"
                f"{'; saturated ' + self._saturated if self._saturated else ''}"
            )
            return Step(lam, new, moved, err, i_term, p_term, clamped, n, b_tok, b_em, wn, w_tok, w_em, reason,
                        mode, lam_model, self._bias, mix_term, self._mix_pending)

    def _mix_step(self) -> tuple[float, str]:
        """The λ move the domain-mix change since the last step asks for, and a note for the reason.

        Caller holds the lock. ``e_mix`` is the relative error the mix change
        alone adds (same sign convention as the batch error).
        """
        mix = self._mix
        if mix is None:
            return 0.0, ""
        budget = self.target.kind == "token_budget"
        sp = self.target.setpoint

        def rel(em: float, tok: float) -> float:  # a change of mean → the error it adds
            return tok / sp if budget else -em / sp

        d_em, d_tok = mix.step()
        e_mix = rel(d_em, d_tok)
        gate = self.config.mix_gate
        note = ""
        if gate > 0:
            if self._mix_armed_at is None:
                if not mix.has_reference:
                    mix.set_reference()
                    return 0.0, "mix reference set; "
                lv_em, lv_tok, sd_em, sd_tok = mix.shift()
                level, sd = rel(lv_em, lv_tok), (sd_tok if budget else sd_em) / sp
                if abs(level) <= gate * sd:
                    return 0.0, f"mix {level:+.4f} within {gate:g} sd ({sd:.4f}); "
                self._mix_armed_at = self._observed
                e_mix = level  # the whole shift since the reference, at once
                note = f"mix shift detected ({level:+.4f} > {gate:g} sd {sd:.4f}); "
            elif self._observed - self._mix_armed_at >= self.config.mix_hold:
                self._mix_armed_at = None
                mix.set_reference()
                note = "mix reference re-set; "
        term = self.target.sign * self.mix_gain * e_mix
        return term, f"{note}mix change {e_mix:+.4f} -> {term:+.4f} (carried {self._mix_pending:+.4f}); "

    def _feedforward(self, model: Response, n: int, b_em: float, b_tok: float) -> tuple[float | None, str]:
        """Update the model's bias on this batch; the λ it says reaches the corrected setpoint (None: PI).

        Caller holds the lock. Returns (λ or None, a note for the step's reason).
        """
        cfg = self.config
        budget = self.target.kind == "token_budget"
        sp = self.target.setpoint
        pred_tok, pred_em = model.served(last=min(n, model.n))
        predicted, actual = (pred_tok, b_tok) if budget else (pred_em, b_em)
        resid = (actual - predicted) / sp
        self._bias = resid if self._bias is None else self._bias + cfg.bias_gain * (resid - self._bias)
        unit = "tokens" if budget else "EM"
        note = (f"model ({model.n} contexts) predicted {predicted:.4g} {unit} for the batch, residual {resid:+.3f}, "
                f"bias {self._bias:+.3f}")
        if abs(self._bias) > cfg.trust:
            return None, note + f" beyond trust {cfg.trust:g}: PI step; "
        if self._observed < cfg.model_warmup:
            return None, note + f"; model warm-up ({self._observed} of {cfg.model_warmup} outcomes): PI step; "
        goal = sp * (1.0 - self._bias)
        lam_model, out_of_reach = model.solve(self.target.kind, goal, cfg.lam_min, cfg.lam_max)
        reach = f" (out of reach: at lam_{'min' if out_of_reach == 'lo' else 'max'})" if out_of_reach else ""
        return lam_model, note + f"; model target {goal:.4g} {unit} at λ {lam_model:.4f}{reach}; "

    def reset(self) -> None:
        """Forget the batch, the window and the PI memory (e.g. after a manual λ change)."""
        with self._lock:
            self._batch_n, self._batch_em, self._batch_tokens = 0, 0.0, 0.0
            self._win.clear()
            self._win_em = self._win_tokens = 0.0
            self._prev_error = None
            self._bias = None
            self._mix_pending = 0.0
            self._mix_armed_at = None
            if self._mix is not None:
                self._mix.clear()

    def retarget(self, target: Target) -> None:
        """Hold a new target from the next step on (the PI memory is reset; the window is kept)."""
        if not isinstance(target, Target):
            raise ConfigError(f"target must be a Target, got {type(target).__name__}")
        with self._lock:
            self.target = target
            self.ki = DEFAULT_KI[target.kind] if self.config.ki is None else float(self.config.ki)
            self.mix_gain = self._mix_gain(target)
            self._prev_error = None
            self._bias = None
            self._mix_pending = 0.0
            self._mix_armed_at = None
            if self._mix is not None:
                self._mix.forget_step()
            self._batch_n, self._batch_em, self._batch_tokens = 0, 0.0, 0.0

    # -- reading ------------------------------------------------------------------
    def state(self) -> ControllerState:
        with self._lock:
            wn = len(self._win)
            w_em = self._win_em / wn if wn else None
            w_tok = self._win_tokens / wn if wn else None
            w_err = self._error(w_em, w_tok) if wn else None  # type: ignore[arg-type]
            return ControllerState(
                target=self.target.kind, target_value=self.target.value, setpoint=self.target.setpoint,
                enabled=self.enabled, lam=self._lam, observed=self._observed, steps=self._steps, moves=self._moves,
                last_error=self._last_error, window_n=wn, window_tokens=w_tok, window_em=w_em, window_error=w_err,
                saturated=self._saturated, last_move_ts=self._last_move_ts, mode=self._mode,
                model_bias=self._bias,
                mix_shares=self._mix.shares() if self._mix is not None else None,
                mix_pending=self._mix_pending,
            )

    def with_config(self, **changes: object) -> LambdaController:
        """A fresh controller for the same target with some config fields changed."""
        return LambdaController(self.target, replace(self.config, **changes))  # type: ignore[arg-type]


__all__ = ["DEFAULT_KI", "DEFAULT_MIX_GAIN", "TARGET_KINDS", "ControllerConfig", "ControllerState", "LambdaController",
           "Step", "Target"]
