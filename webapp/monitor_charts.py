"""The monitor's pictures, drawn on the server as PNG: hourly traffic with its shares, and the class mix."""
from __future__ import annotations

import io
from datetime import datetime, timedelta

from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure  # not pyplot: no global state, so request threads may draw at once
from matplotlib.ticker import PercentFormatter

INK, MUTED, ACCENT, SCOPE, GRID = "#1d2430", "#5b6472", "#c0392b", "#5a6a7e", "#e6e2dc"
WIDTH_IN, DPI = 9.4, 100


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _style(axes) -> None:
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    axes.spines["left"].set_color(MUTED)
    axes.spines["bottom"].set_color(MUTED)
    axes.tick_params(colors=MUTED, labelsize=9)
    axes.grid(axis="y", color=GRID, linewidth=0.8)
    axes.set_axisbelow(True)


def traffic_png(figures: dict, hours: int) -> bytes:
    """Photos per hour over the last `hours`, and the not-sure and out-of-scope shares against validation's."""
    buckets = figures["hourly"][-hours:]
    starts = [datetime.fromisoformat(b["start"]) for b in buckets]
    counts = [b["answers"] for b in buckets]
    figure = Figure(figsize=(WIDTH_IN, 4.9), layout="constrained")
    photos, shares = figure.subplots(2, 1, sharex=True, height_ratios=(1, 1.2))
    width = 1 / 24 * 0.85  # days: one hour's bar with a gap
    photos.bar(starts, counts, width=width, align="edge", color=INK)
    photos.set_ylabel("photos an hour", color=MUTED, fontsize=9)
    photos.set_ylim(0, max(counts + [1]) * 1.15)
    expected = figures["validation"]
    for key, colour, label in (("not_sure", ACCENT, '"not sure"'), ("out_of_scope", SCOPE, "none of the classes")):
        points = [(s, b[key] / b["answers"]) for s, b in zip(starts, buckets) if b["answers"]]
        if points:
            xs, ys = zip(*points)
            shares.plot([x + timedelta(minutes=30) for x in xs], ys, "o-", color=colour, markersize=3, linewidth=1.4,
                        label=f"{label}, live")
        if expected[key] is not None:
            shares.axhline(expected[key], color=colour, linestyle="--", linewidth=1.2,
                           label=f"{label}, validation {expected[key]:.0%}")
    shares.set_ylim(0, 1.02)
    shares.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    shares.set_ylabel("share of that hour", color=MUTED, fontsize=9)
    figure.legend(loc="outside lower center", fontsize=8, frameon=False, ncols=4)
    locator = AutoDateLocator()
    shares.xaxis.set_major_locator(locator)
    shares.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    shares.set_xlim(starts[0], datetime.fromisoformat(figures["now"]))
    for axes in (photos, shares):
        _style(axes)
    shares.set_xlabel("UTC", color=MUTED, fontsize=9)
    return _png(figure)


def class_mix_png(figures: dict) -> bytes:
    """The served model's class answers over the last 7 days beside the training data's mix, class by class."""
    names = figures["model"]["names"]
    training = figures["validation"]["class_mix"]
    live = figures["windows"]["week"]["class_mix"]["live"]
    classes = sorted(training.keys() | live.keys(), key=lambda c: names.get(c, c), reverse=True)
    figure = Figure(figsize=(WIDTH_IN, 1.1 + 0.42 * len(classes)), layout="constrained")
    axes = figure.subplots()
    rows = range(len(classes))
    axes.barh([r + 0.2 for r in rows], [live.get(c, 0) for c in classes], height=0.38, color=ACCENT,
              label=f"answered, last 7 days ({figures['windows']['week']['class_mix']['answers']} photos)")
    axes.barh([r - 0.2 for r in rows], [training.get(c, 0) for c in classes], height=0.38, color="#b9b2a6",
              label="training data")
    axes.set_yticks(list(rows), [names.get(c, c) for c in classes], fontsize=9, color=INK)
    axes.xaxis.set_major_formatter(PercentFormatter(1.0))
    figure.legend(loc="outside upper center", fontsize=8, frameon=False, ncols=2)
    _style(axes)
    axes.grid(axis="x", color=GRID, linewidth=0.8)
    axes.grid(axis="y", visible=False)
    return _png(figure)
