"""A whole run fitted into its recipe's budget: each stage's epochs chosen from every stage's probed epoch time."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .runfiles import epoch_table_seconds

# What the end of a run costs beyond the scope detector's pass: a fifth of a last-stage epoch covers the final
# validation pass (validation is a small part of an epoch: docs/experiments.md, "Figures behind code"), and the
# minute covers plots, the export and a slower disk.
FINISH_EPOCH_SHARE, FINISH_FIXED_SECONDS = 0.2, 60.0
# How far measured stage times may move the probed estimates, either way: beyond this a measurement is taken as
# noise (a stage of one tiny epoch), not as the machine's speed.
SPEED_LIMITS = (0.2, 10.0)


def finish_reserve(last_epoch_seconds: float, scope_seconds: float) -> float:
    """Seconds kept for the end of the run (final validation, scope detector, export), from the last stage's probe."""
    return FINISH_EPOCH_SHARE * last_epoch_seconds + FINISH_FIXED_SECONDS + scope_seconds


@dataclass(frozen=True)
class StageEstimate:
    """A stage still to run: its range of epochs ([n, n] when fixed) and one epoch's probed seconds."""

    name: str
    low: int
    high: int
    epoch_seconds: float


@dataclass(frozen=True)
class RunPlan:
    """How many epochs each remaining stage gets (0: dropped), and the figures that decided it."""

    epochs: dict[str, int]
    estimates: tuple[StageEstimate, ...]
    budget_seconds: float
    spent_seconds: float
    reserve_seconds: float
    speed: float  # measured over probed seconds of the stages finished so far (the estimates are already scaled by it)

    @property
    def dropped(self) -> list[str]:
        return [name for name, epochs in self.epochs.items() if epochs == 0]

    @property
    def planned_seconds(self) -> float:
        """The remaining stages' time under the plan (the last stage's at its planned epochs)."""
        return sum(self.epochs[e.name] * e.epoch_seconds for e in self.estimates)

    @property
    def fits(self) -> bool:
        """Whether every remaining stage's low end fits in what is left after the reserve."""
        lows = sum(e.low * e.epoch_seconds for e in self.estimates)
        return self.spent_seconds + lows + self.reserve_seconds <= self.budget_seconds

    def describe(self) -> str:
        """Lines for the training log."""
        parts = [f"{e.name} " + (f"{self.epochs[e.name]}" if e.low == e.high else
                                 f"{self.epochs[e.name]} of [{e.low}, {e.high}]")
                 + f" x ~{e.epoch_seconds / 60:.1f} min" for e in self.estimates]
        speed = f", stages so far ran {self.speed:.2f}x the probe's estimate" if self.speed != 1.0 else ""
        return (f"  plan: budget {self.budget_seconds / 60:.0f} min, {self.spent_seconds / 60:.1f} spent, "
                f"{self.reserve_seconds / 60:.1f} kept for the export{speed}; epochs: {'; '.join(parts)}"
                + (f"; dropped: {', '.join(self.dropped)}" if self.dropped else "")
                + ("" if self.fits else "; even the low ends do not fit: the last stage gets what is left"))

    def to_json(self) -> dict:
        return {"epochs": dict(self.epochs), "dropped": self.dropped, "estimates": [asdict(e) for e in self.estimates],
                "budget_seconds": round(self.budget_seconds, 1), "spent_seconds": round(self.spent_seconds, 1),
                "reserve_seconds": round(self.reserve_seconds, 1), "speed": round(self.speed, 3),
                "planned_seconds": round(self.planned_seconds, 1)}


def plan_run(estimates: list[StageEstimate], budget_seconds: float, spent_seconds: float, reserve_seconds: float,
             speed: float = 1.0) -> RunPlan:
    """Every stage its low end; then, earliest stage first, more epochs while they fit; the last stage the rest.
    `speed` is recorded, not applied: the estimates come scaled."""
    # Earliest first: an early epoch is the cheapest (lowest resolution), and every later stage starts from what it
    # learnt. The last stage is not planned to the epoch: it anneals on the clock through whatever is left.
    epochs = {e.name: e.low for e in estimates}
    room = budget_seconds - spent_seconds - reserve_seconds - sum(e.low * e.epoch_seconds for e in estimates)
    for estimate in estimates:
        seconds = estimate.epoch_seconds
        more = estimate.high - estimate.low if seconds <= 0 else min(estimate.high - estimate.low,
                                                                    max(0, math.floor(room / seconds)))
        epochs[estimate.name] += more
        room -= more * seconds
    return RunPlan(epochs, tuple(estimates), budget_seconds, spent_seconds, reserve_seconds, speed)


def measured_speed(pairs: list[tuple[float, float]]) -> float:
    """Measured over estimated seconds, summed over (estimated, measured) pairs of finished stages; 1 without any."""
    estimated, measured = (sum(p[i] for p in pairs) for i in (0, 1))
    if estimated <= 0 or measured <= 0:
        return 1.0
    return min(max(measured / estimated, SPEED_LIMITS[0]), SPEED_LIMITS[1])


def stage_timing(epoch_seconds: float, rows: list[dict], cut_short: bool) -> tuple[float, float] | None:
    """(probed, measured) seconds of a finished stage's whole epochs, for `measured_speed`; None without any."""
    # The clock's last, cut-short epoch would make the machine look faster than it is.
    whole = rows[:-1] if cut_short else rows
    return (epoch_seconds * len(whole), epoch_table_seconds(whole)) if whole else None
