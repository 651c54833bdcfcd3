"""The monitor: live answers of the served model against what its validation split predicted, hour by hour."""
from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Blueprint, current_app, render_template
from sqlalchemy import case, func, literal, select, text
from sqlalchemy.orm import Session

from training.inference import Predictor

from .db import Answer, get_db, utcnow
from .model import model_holder
from .security import operator_session, require_operator
from .service import current_predictor, unsure_below_in_force

bp = Blueprint("monitor", __name__)
HOUR = timedelta(hours=1)
WINDOWS = {"hour": HOUR, "day": 24 * HOUR, "week": 7 * 24 * HOUR}
WINDOW_TITLES = {"hour": "the last hour", "day": "the last 24 hours", "week": "the last 7 days"}
# A validation rate of 0 (a small split that rejected none) would make any live share "infinitely" past it; the
# ratio is taken against at least this rate, so a warning needs a share of ratio x 2% at the very least.
RATE_FLOOR = 0.02


def now() -> datetime:
    """The monitor's clock: app.config["MONITOR_CLOCK"] (a callable, for tests) or the real UTC time."""
    return current_app.config.get("MONITOR_CLOCK", utcnow)()


@dataclass(frozen=True)
class DriftRule:
    """When live traffic has drifted well past validation (GUITARS_DRIFT_*)."""

    ratio: float  # a share at this many times its validation rate (or RATE_FLOOR) or more
    min_answers: int  # ... over at least this many answers of the served model in the window
    class_distance: float  # the class mix's total variation distance from the training mix above this

    @classmethod
    def from_config(cls, config) -> DriftRule:
        return cls(config["DRIFT_RATIO"], config["DRIFT_MIN_ANSWERS"], config["DRIFT_CLASS_DISTANCE"])

    def to_json(self) -> dict:
        return {"ratio": self.ratio, "min_answers": self.min_answers, "class_distance": self.class_distance,
                "rate_floor": RATE_FLOOR}


def expectations(report: dict, unsure_below: float, model_line: float, has_detector: bool = True) -> dict:
    """What the validation split predicts for live traffic: the not-sure and out-of-scope shares (None where the
    report cannot say, with the reason) and the training data's class mix (train and validation photos)."""
    validation, groups, scope = report.get("validation") or {}, report.get("groups") or {}, report.get("scope")
    not_sure, why = None, "report.json records no not-sure share of the validation photos"
    if unsure_below != model_line:
        why = f"GUITARS_UNSURE_BELOW ({unsure_below:g}) replaces the line validation was measured at ({model_line:g})"
    elif (report.get("calibration") or {}).get("unsure_share") is not None:
        not_sure, why = report["calibration"]["unsure_share"], None
    elif groups.get("n") and groups.get("n") == validation.get("n"):  # a model trained before unsure_share
        # group_figures counts the not-sure photos of grouped classes: every class is grouped here, so all of them.
        not_sure, why = groups["unsure"] / groups["n"], None
    out_of_scope = (scope or {}).get("valid_rejected")
    counts = (report.get("dataset") or {}).get("counts") or {}
    total = sum(counts.values())
    return {"n": validation.get("n"), "not_sure": not_sure, "not_sure_unknown": why,
            "out_of_scope": out_of_scope if has_detector else 0.0,  # without a detector every answer is in scope
            "class_mix": {label: count / total for label, count in sorted(counts.items())} if total else {}}


def rate(count: int, n: int, expected: float | None) -> dict:
    """One live share beside its validation rate; `ratio` against the rate (at least RATE_FLOOR)."""
    share = count / n if n else None
    ratio = share / max(expected, RATE_FLOOR) if share is not None and expected is not None else None
    # Rounded, so that 15 in 50 against 10% is 3x and not 2.9999999999999996x.
    return {"count": count, "share": share, "validation": expected, "ratio": None if ratio is None else round(ratio, 4)}


def total_variation(live: dict[str, float], training: dict[str, float]) -> float:
    """Half the summed absolute differences of two class mixes: 0 the same mix, 1 no class in common."""
    return sum(abs(live.get(c, 0.0) - training.get(c, 0.0)) for c in live.keys() | training.keys()) / 2


def window_figures(counts: list[tuple], sha256: str, hours: int, end: datetime, expected: dict) -> dict:
    """The figures of the answers of the last `hours` hours: the served model's against validation, others only
    counted. `counts` are answer_counts' rows."""
    inside = [c for c in counts if c[0] < hours]
    ours = [c for c in inside if c[1] == sha256]
    answers = sum(c[5] for c in ours)
    in_scope = sum(c[5] for c in ours if c[4])
    mix: dict[str, float] = {}
    for c in ours:
        if c[4]:
            mix[c[2]] = mix.get(c[2], 0) + c[5] / in_scope
    return {
        "start": (end - hours * HOUR).isoformat(), "end": end.isoformat(), "answers": answers,
        "other_models": sum(c[5] for c in inside) - answers,
        "not_sure": rate(sum(c[5] for c in ours if c[3]), answers, expected["not_sure"]),
        "out_of_scope": rate(answers - in_scope, answers, expected["out_of_scope"]),
        "class_mix": {"answers": in_scope, "live": dict(sorted(mix.items())),
                      "distance": total_variation(mix, expected["class_mix"]) if in_scope else None},
    }


def warnings(windows: dict[str, dict], rule: DriftRule) -> list[dict]:
    """A plain warning for each window whose traffic drifted well past validation under `rule`."""
    said = []
    for name, w in windows.items():
        if w["answers"] < rule.min_answers:
            continue
        when = WINDOW_TITLES[name]
        for kind, what in (("out_of_scope", "answered as none of the classes"), ("not_sure", 'shown as "not sure"')):
            r = w[kind]
            if r["ratio"] is not None and r["ratio"] >= rule.ratio:
                said.append({"window": name, "kind": kind, "message": (
                    f"In {when}, {r['share']:.0%} of {w['answers']} photos were {what}: {r['ratio']:.1f} times the "
                    f"{r['validation']:.0%} of the validation photos. The photos people send are not like the ones "
                    "the model was trained on, or the model no longer fits them.")})
        mix = w["class_mix"]
        if mix["answers"] >= rule.min_answers and mix["distance"] > rule.class_distance:
            said.append({"window": name, "kind": "class_mix", "message": (
                f"In {when}, the classes answered are far from the training data's mix (total variation distance "
                f"{mix['distance']:.2f}, above {rule.class_distance:.2f}, over {mix['answers']} answers).")})
    return said


def hours_back(end: datetime, low: int, high: int):
    """SQL for the hours between `end` and an answer's time, known to be from `low` to `high` (excluded): a binary
    search of CASEs, so each row is compared about log2(high - low) times, not once for every hour."""
    if high - low == 1:
        return literal(low)
    middle = (low + high) // 2
    return case((Answer.created_at > end - middle * HOUR, hours_back(end, low, middle)),
                else_=hours_back(end, middle, high))


def answer_counts(session: Session, end: datetime, hours: int) -> list[tuple]:
    """(hours back, model_sha256, label, uncertain, in_scope, answers) for the answers of the `hours` hours up to
    `end`, counted by the database: hour 0 is (end - 1 h, end], as the windows count. No row is fetched, so the log's
    size (GUITARS_ANSWER_LOG_MAX_ROWS) costs the database, not the worker."""
    back = hours_back(end, 0, hours).label("back")
    query = (select(back, Answer.model_sha256, Answer.label, Answer.uncertain, Answer.in_scope, func.count())
             .where(Answer.created_at > end - hours * HOUR, Answer.created_at <= end)
             # By the output names: PostgreSQL would not match the CASE's bind parameters written out twice.
             .group_by(text("back"), Answer.model_sha256, Answer.label, Answer.uncertain, Answer.in_scope))
    counts = [tuple(row) for row in session.execute(query)]
    # End the read at once: db.py begins every SQLite transaction IMMEDIATE (the write lock), and the other workers'
    # answers would wait on it while the figures are worked out and drawn.
    session.rollback()
    return counts


def hourly(counts: list[tuple], sha256: str, end: datetime, hours: int) -> list[dict]:
    """The served model's answers hour by hour, the oldest first; the newest hour is the "hour" window."""
    buckets = [{"start": (end - (hours - i) * HOUR).isoformat(), "answers": 0, "not_sure": 0, "out_of_scope": 0}
               for i in range(hours)]
    for back, sha, _label, uncertain, in_scope, n in counts:
        if sha == sha256 and back < hours:
            bucket = buckets[hours - 1 - back]
            bucket["answers"] += n
            bucket["not_sure"] += n if uncertain else 0
            bucket["out_of_scope"] += 0 if in_scope else n
    return buckets


def monitor_figures(predictor: Predictor, session: Session, end: datetime) -> dict:
    """Everything the monitor shows, as plain data (the page, the pictures and /api/v1/monitor)."""
    unsure_below, _ = unsure_below_in_force(predictor)
    expected = expectations(predictor.report, unsure_below, predictor.unsure_below, predictor.scope is not None)
    counts = answer_counts(session, end, WINDOWS["week"] // HOUR)
    windows = {name: window_figures(counts, predictor.sha256, span // HOUR, end, expected)
               for name, span in WINDOWS.items()}
    rule = DriftRule.from_config(current_app.config)
    return {
        "now": end.isoformat(),
        "model": {"sha256": predictor.sha256, "version": model_holder().version(predictor),
                  "names": predictor.names, "unsure_below": unsure_below},
        "validation": expected, "windows": windows, "hourly": hourly(counts, predictor.sha256, end, WINDOWS["week"] // HOUR),
        "warnings": warnings(windows, rule), "drift_rule": rule.to_json(),
    }


def current_figures() -> dict:
    return monitor_figures(current_predictor(), get_db(), now())


@bp.before_request
def operators_only():
    """Traffic and the class mix of what people send are the operator's to see, behind the review page's token."""
    return require_operator("The monitor")


@bp.app_context_processor
def monitor_link() -> dict:
    return {"monitor_link": operator_session()}  # the header links the monitor only for a browser let in


@bp.get("/monitor")
def page():
    from .monitor_charts import class_mix_png, traffic_png

    m = current_figures()
    # The pictures go inline (as the results page's heat maps do): the figures are worked out once a page view,
    # not again for each picture.
    pictures = {"day": traffic_png(m, 24), "week": traffic_png(m, 7 * 24), "classes": class_mix_png(m)}
    return render_template("monitor.html", m=m, titles=WINDOW_TITLES,
                           pictures={k: "data:image/png;base64," + base64.b64encode(v).decode()
                                     for k, v in pictures.items()})


@bp.get("/api/v1/monitor")
def api():
    return current_figures()
