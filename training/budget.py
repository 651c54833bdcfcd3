"""Fitting an elastic last stage into a recipe's wall-clock budget, from the epoch times already measured."""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class EpochPlan:
    """How many epochs an elastic stage runs, and the figures that decided it (kept in the report)."""

    epochs: int
    budget_seconds: float
    spent_seconds: float
    epoch_seconds_estimate: float
    reserve_seconds: float

    def describe(self) -> str:
        """One line for the training log."""
        return (f"  budget {self.budget_seconds / 60:.0f} min, {self.spent_seconds / 60:.1f} spent; one epoch "
                f"~{self.epoch_seconds_estimate / 60:.1f} min, {self.reserve_seconds / 60:.1f} kept for the "
                f"export -> {self.epochs} epochs")


def scaled_epoch_seconds(previous_epoch_seconds: list[float], previous_size: int, size: int) -> float:
    """An epoch's time at `size`, from the stage before it with the same trainable layers (cost ~ pixel count)."""
    if not previous_epoch_seconds:
        raise ValueError("the stage before an elastic stage recorded no epochs")
    # The first epoch of a stage carries warm-up, so the mean errs on the side of fewer epochs.
    mean = sum(previous_epoch_seconds) / len(previous_epoch_seconds)
    return mean * (size / previous_size) ** 2


def plan_epochs(budget_seconds: float, spent_seconds: float, epoch_seconds: float, low: int, high: int) -> EpochPlan:
    """As many epochs as fit in what is left of the budget after a reserve for the final evaluation and export."""
    # The final evaluation is one validation pass at the last size plus the export: a fifth of an epoch covers it
    # with room (validation is about a tenth of an epoch here), and the minute absorbs a slower disk.
    reserve = 0.2 * epoch_seconds + 60.0
    room = budget_seconds - spent_seconds - reserve
    fits = math.floor(room / epoch_seconds) if epoch_seconds > 0 else high
    return EpochPlan(epochs=max(low, min(high, fits)), budget_seconds=budget_seconds, spent_seconds=spent_seconds,
                     epoch_seconds_estimate=epoch_seconds, reserve_seconds=reserve)
