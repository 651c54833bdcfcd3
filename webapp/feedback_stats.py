"""What the verdicts say: the agreement rate of served answers, overall, per class and per model version."""
from __future__ import annotations

import math

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from .db import Answer, Verdict

Z95 = 1.96  # a 95% Wilson interval: honest about a rate drawn from a handful of verdicts


def wilson(agreed: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of agreed/n (0-1); (0, 1) with no verdicts."""
    if n == 0:
        return 0.0, 1.0
    p, z2 = agreed / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def figure(agreed: int, n: int) -> dict:
    """One agreement figure: verdicts behind it, how many said right, the rate and its 95% interval."""
    low, high = wilson(agreed, n)
    return {"verdicts": n, "agreed": agreed, "rate": round(agreed / n, 4) if n else None,
            "low": round(low, 4), "high": round(high, 4)}


def agreement(session: Session) -> dict:
    """The agreement rate of served answers (the share of verdicts saying the answer was right).

    `per_class` is by the answer as served: the model's top class, or `label` None for an answer of "none of my
    classes"; `per_model` by the model's SHA-256, with the first and last verdict's time.
    """
    agreed = func.sum(case((Verdict.correct, 1), else_=0))
    served = case((Answer.in_scope, Answer.label), else_=None)
    joined = select().select_from(Verdict).join(Answer, Verdict.answer_id == Answer.id)
    n, k = session.execute(joined.add_columns(func.count(), agreed)).one()
    per_class = [{"label": label, **figure(int(k_), n_)} for label, n_, k_ in session.execute(
        joined.add_columns(served, func.count(), agreed).group_by(served))]
    per_class.sort(key=lambda row: (row["label"] is None, row["label"] or ""))
    per_model = [{"model_sha256": sha, **figure(int(k_), n_), "first": first.isoformat(), "last": last.isoformat()}
                 for sha, n_, k_, first, last in session.execute(
                     joined.add_columns(Answer.model_sha256, func.count(), agreed, func.min(Verdict.created_at),
                                        func.max(Verdict.created_at)).group_by(Answer.model_sha256))]
    per_model.sort(key=lambda row: row["last"], reverse=True)  # the latest model first
    return {"overall": figure(int(k or 0), n), "per_class": per_class, "per_model": per_model}
