"""`flask feedback list | export | stats`: what people said about the served answers, from the app's database."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import click
from flask import Flask
from flask.cli import AppGroup
from sqlalchemy import select
from sqlalchemy.orm import joinedload

from training.fsutil import atomic_path

from .db import Answer, Verdict, database
from .feedback_stats import agreement
from .photostore import photo_store

CSV_NAME = "verdicts.csv"
CSV_COLUMNS = ["answer_id", "verdict_at", "model_sha256", "answer_label", "answer_probability", "answer_in_scope",
               "answer_uncertain", "correct", "label", "none_of_these", "photo", "reviewed_at", "review_decision"]


def said(verdict: Verdict) -> str:
    """The person's verdict in words."""
    if verdict.correct:
        return "right"
    return "none of these" if verdict.none_of_these else f"it is {verdict.label}"


def served(answer: Answer) -> str:
    """The served answer in words."""
    if not answer.in_scope:
        return "none of my classes"
    return f"{answer.label} {answer.probability:.0%}" + (" (not sure)" if answer.uncertain else "")


def verdicts_newest_first(limit: int | None = None, pending: bool = False) -> list[Verdict]:
    """The verdicts with their answers, newest first, read in one short reading session."""
    # Short, though a read never holds SQLite's write lock: one left open while photos are copied would keep the WAL
    # from being checkpointed past it, and the file grows while the server writes.
    query = (select(Verdict).join(Answer, Verdict.answer_id == Answer.id).options(joinedload(Verdict.answer))
             .order_by(Verdict.created_at.desc()))
    if pending:
        query = query.where(Answer.photo.is_not(None), Verdict.reviewed_at.is_(None))
    with database().reads() as session:
        return list(session.scalars(query.limit(limit)))


@click.group("feedback", cls=AppGroup)  # its commands run inside the app context: the database
def feedback_group():
    """What people said about the answers: list, export, stats."""


@feedback_group.command("list")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1), help="Verdicts shown, newest first.")
@click.option("--pending", is_flag=True, help="Only photos shared with consent that nobody has reviewed yet.")
def list_command(limit, pending):
    """The latest verdicts: when, the answer, what the person said, whether the photo was kept and reviewed."""
    verdicts = verdicts_newest_first(limit, pending)
    if not verdicts:
        click.echo("No verdicts yet.")
        return
    click.echo(f"{'time (UTC)':16}  {'answer id':22}  {'answered':28}  {'the person said':28}  photo  reviewed")
    for v in verdicts:
        photo = "kept" if v.answer.photo else "-"
        click.echo(f"{v.created_at:%Y-%m-%d %H:%M}  {v.answer_id:22}  {served(v.answer):28}  {said(v):28}  "
                   f"{photo:5}  {v.review_decision or '-'}")


def csv_row(v: Verdict, exported: str) -> dict:
    a = v.answer
    return {"answer_id": v.answer_id, "verdict_at": v.created_at.isoformat(), "model_sha256": a.model_sha256,
            "answer_label": a.label, "answer_probability": a.probability, "answer_in_scope": a.in_scope,
            "answer_uncertain": a.uncertain, "correct": v.correct, "label": v.label or "",
            "none_of_these": v.none_of_these, "photo": exported,
            "reviewed_at": v.reviewed_at.isoformat() if v.reviewed_at else "", "review_decision": v.review_decision or ""}


@feedback_group.command("export")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--ood", "ood_dir", type=click.Path(file_okay=False, path_type=Path),
              help='Also write the "none of these" photos here, as OOD/<id>.jpg [default: left out].')
def export_command(out_dir, ood_dir):
    """The photos shared with consent as OUT/<class>/<id>.jpg (the person's label) and OUT/verdicts.csv of every
    verdict; a photo a reviewer rejected is left out. A folder to inspect: `flask review` is the way into DATA."""
    store, rows, written = photo_store(), [], 0
    for v in reversed(verdicts_newest_first()):
        exported = ""
        target = None
        if v.answer.photo and v.review_decision != "rejected":
            target = (ood_dir / f"{v.answer_id}.jpg" if ood_dir else None) if v.none_of_these \
                else out_dir / v.label / f"{v.answer_id}.jpg"
        if target is not None:
            try:
                data = store.path(v.answer.photo).read_bytes()
            except FileNotFoundError:  # expired between the query and now
                data = None
            if data is not None:
                with atomic_path(target) as tmp:
                    tmp.write_bytes(data)
                exported, written = str(target), written + 1
        rows.append(csv_row(v, exported))
    with atomic_path(out_dir / CSV_NAME) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    click.echo(f"{written} photos and {len(rows)} verdicts ({out_dir / CSV_NAME}) exported.")


def percent(row: dict) -> str:
    if not row["verdicts"]:
        return "-"
    return f"{row['rate']:.0%} (95%: {row['low']:.0%}-{row['high']:.0%})"


@feedback_group.command("stats")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def stats_command(as_json):
    """How often the served answers were right, by the people's verdicts: overall, per class, per model version."""
    with database().reads() as session:
        stats = agreement(session)
    if as_json:
        click.echo(json.dumps(stats, indent=2))
        return
    overall = stats["overall"]
    click.echo(f"Agreement: {percent(overall)} of {overall['verdicts']} verdicts said the answer was right.")
    if not overall["verdicts"]:
        return
    click.echo(f"\n{'answered':28}  {'verdicts':>8}  agreement")
    for row in stats["per_class"]:
        click.echo(f"{row['label'] or '(none of my classes)':28}  {row['verdicts']:8}  {percent(row)}")
    click.echo(f"\n{'model (SHA-256)':16}  {'verdicts':>8}  agreement  (last verdict)")
    for row in stats["per_model"]:
        click.echo(f"{row['model_sha256'][:16]:16}  {row['verdicts']:8}  {percent(row)}  ({row['last'][:16]})")


def init_app(app: Flask) -> None:
    """Offer `flask feedback`."""
    app.cli.add_command(feedback_group)
