"""Click commands: train, evaluate, dataset check/demo. Plain click, so Flask and `python -m training` share them."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .backbones import WeightsUnavailable
from .classnames import ClassNamesError
from .dataset import DatasetError
from .labels import DecisionsError
from .recipes import RecipeError, available_recipes
from .runfiles import EXPORT, RunFileError
from .runtimes import RUNTIMES
from .versions import VersionError

USER_ERRORS = (RecipeError, DatasetError, DecisionsError, ClassNamesError, WeightsUnavailable, RunFileError,
               VersionError)


def _fail_clearly(func):
    """Turn expected errors into a one-line `Error: ...` and exit status 1, not a traceback."""
    import functools

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from .devices import DeviceError
        from .inference import ModelLoadError
        from .runstate import RunError

        try:
            return func(*args, **kwargs)
        except (*USER_ERRORS, RunError, DeviceError, ModelLoadError) as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


@click.command("train")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder with one sub-folder of photos per class.")
@click.option("--recipe", default="cpu", show_default=True,
              help=f"Shipped recipe name ({', '.join(available_recipes())}) or path to a .toml file.")
@click.option("--out", "out_dir", default="runs/latest", show_default=True, type=click.Path(path_type=Path),
              help="Run directory for export.pkl, report.json and plots.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its last completed stage.")
@click.option("--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16"]),
              help="auto: bf16 on CPUs with native bf16 units and on CUDA, else fp32.")
@click.option("--pretrained/--no-pretrained", default=True, show_default=True,
              help="Start from ImageNet weights (random initialisation only when asked for).")
@click.option("--progress/--no-progress", default=None,
              help="Show progress bars (default: when the output is a terminal; else one line per epoch).")
@_fail_clearly
def train_command(data_dir, recipe, out_dir, resume, device, precision, pretrained, progress):
    """Train a classifier on DATA with a staged recipe and export it to OUT."""
    from .recipes import load_recipe
    from .runner import TrainOptions, train_recipe

    if progress is None:  # a log file or CI would get a wall of carriage returns from the bars
        progress = sys.stdout.isatty()
    options = TrainOptions(device=device, precision=precision, pretrained=pretrained, resume=resume,
                           progress=progress)
    report = train_recipe(data_dir, load_recipe(recipe), out_dir, options, echo=click.echo)
    if report:  # empty on the non-zero ranks of a distributed run, which write and print nothing
        click.echo(f"Exported {out_dir / EXPORT}")


@click.command("evaluate")
@click.option("--model", "model_path", required=True, type=click.Path(path_type=Path),
              help="export.pkl or a run directory.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Labelled folder with the training layout.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a summary.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Write the confusion matrix PNG here.")
@click.option("--tta", is_flag=True, help="Average each photo with its mirror image (twice the compute).")
@click.option("--mistakes", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the misclassified photos here as CSV, the most confidently wrong first.")
@click.option("--ood", "ood_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Photos that are none of the classes (each sub-folder reported apart): how many the model rejects.")
@click.option("--valid-only", is_flag=True, help="Score only the run's validation photos (its split.json).")
@click.option("--views", is_flag=True,
              help="Also score views cut from the photos: close-ups of the headstock, body and bridge, rotated and "
                   "off-centre shots.")
@_fail_clearly
def evaluate_command(model_path, data_dir, as_json, plot, tta, mistakes, ood_dir, valid_only, views):
    """Score a trained model on a labelled folder."""
    from .evaluate import evaluate_folder, evaluation_summary
    from .inference import Predictor
    from .metrics import plot_confusion_matrix
    from .mistakes import write_mistakes_csv
    from .runfiles import validation_paths

    predictor = Predictor.load(model_path, tta=tta)
    progress = not as_json and sys.stderr.isatty()
    only = validation_paths(predictor.path.parent) if valid_only else None
    result = evaluate_folder(predictor, data_dir, progress=progress, only=only, views=views, ood_dir=ood_dir)
    if plot:
        plot_confusion_matrix(result.metrics["confusion_matrix"], result.classes, plot,
                              title=f"Confusion on {data_dir}")
    if mistakes:
        write_mistakes_csv(result.mistakes, mistakes)
    click.echo(json.dumps(result.to_json()) if as_json else evaluation_summary(result))


@click.command("predict")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--model", "model_path", envvar="GUITARS_MODEL", default="runs/demo", show_default=True,
              type=click.Path(path_type=Path), help="export.pkl or a run directory (also read from GUITARS_MODEL).")
@click.option("--runtime", default="auto", show_default=True, type=click.Choice(RUNTIMES),
              help="The same choice as the server's GUITARS_RUNTIME.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(1, 1000))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Also write the results here.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (as the API gives them).")
@_fail_clearly
def predict_command(paths, model_path, runtime, top_k, csv_path, as_json):
    """Classify image files and folders (recursively), as the server would."""
    from .fsutil import atomic_path
    from .inference import Predictor
    from .predict_files import expand_paths, predict_files, results_csv, results_table

    predictor = Predictor.load(model_path, runtime=runtime)
    files = expand_paths(list(paths))
    top_k = min(top_k, len(predictor.classes))
    results, unreadable = predict_files(predictor, files, top_k, progress=not as_json and sys.stderr.isatty())
    for file in unreadable:
        click.echo(f"skipped {file.file}: {file.reason}", err=True)
    if csv_path:
        with atomic_path(csv_path) as tmp:
            tmp.write_text(results_csv(results, top_k))
    click.echo(json.dumps({"model": predictor.describe(), "results": results,
                           "unreadable": [file.to_json() for file in unreadable]}, indent=1)
               if as_json else results_table(results))


@click.group("dataset")
def dataset_group():
    """Inspect or create datasets."""


@dataset_group.command("check")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
@_fail_clearly
def dataset_check_command(data_dir, as_json):
    """Report class counts, unreadable files and duplicate groups (also across classes)."""
    from .dataset import dataset_report, scan_dataset
    from .labels import decisions_line

    report = dataset_report(scan_dataset(data_dir, progress=not as_json and sys.stderr.isatty()))
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"{report['images']} readable images in {len(report['classes'])} classes ({report['root']})")
    for class_id, count in report["counts"].items():
        click.echo(f"  {class_id:<28}{count:>6}  {report['names'][class_id]}")
    if report["decisions"] and any(report["decisions"][k] for k in ("kept", "relabelled", "excluded")):
        click.echo(decisions_line(report["decisions"]))
    click.echo(f"Unreadable files: {len(report['unreadable'])}")
    for entry in report["unreadable"][:20]:
        click.echo(f"  {entry['file']}: {entry['reason']}")
    click.echo(f"Duplicate groups: {len(report['duplicate_groups'])} "
               f"({report['duplicate_images']} images beyond the first of each group)")
    click.echo(f"Duplicate groups spanning two or more classes: {len(report['cross_class_groups'])}")
    for group in report["cross_class_groups"][:20]:
        click.echo(f"  {', '.join(group['labels'])}: {', '.join(group['files'])}")


@dataset_group.command("review")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the queue [default: DATA/review-queue.json].")
@click.option("--backbone", default="efficientnet_lite0", show_default=True,
              help="Pretrained backbone whose features the out-of-sample classifier uses.")
@click.option("--top", default=20, show_default=True, type=click.IntRange(0), help="Photos to list here.")
@_fail_clearly
def dataset_review_command(data_dir, out_path, backbone, top):
    """Rank the photos a person should look at: likely wrong labels, duplicates, unreadable, out of scope."""
    from .review import build_queue, queue_path, write_queue

    queue = build_queue(data_dir, backbone=backbone, progress=sys.stderr.isatty())
    path = queue_path(data_dir, out_path)
    write_queue(queue, path)
    counts = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in queue["counts"].items() if n)
    click.echo(f"{len(queue['entries'])} of {queue['photos']} photos to review ({counts or 'nothing found'}); "
               f"out-of-sample accuracy {queue['out_of_sample_accuracy']:.1%}")
    for entry in queue["entries"][:top]:
        suggestion = f"-> {entry['suggested']} {entry['suggested_p']:.2f}" if entry["suggested"] else ""
        click.echo(f"  {entry['path']:<48}{', '.join(entry['reasons']):<36}{suggestion}")
    click.echo(f"Queue written to {path}. Walk it in the browser: flask --app wsgi review --data {data_dir}")


@dataset_group.command("demo")
@click.option("--out", "out_dir", default="demo_data", show_default=True, type=click.Path(path_type=Path))
@click.option("--per-class", default=80, show_default=True, type=click.IntRange(2, 10000))
@click.option("--size", default=160, show_default=True, type=click.IntRange(32, 1024))
def dataset_demo_command(out_dir, per_class, size):
    """Draw the synthetic guitar dataset used by `make run` (no downloads)."""
    from .demo import make_demo_dataset

    make_demo_dataset(out_dir, per_class=per_class, size=size, progress=sys.stderr.isatty())
    click.echo(f"Demo dataset in {out_dir}")


@click.group("models")
def models_group():
    """Model versions: the runs of a models folder, the one served, promotion through a gate, rollback."""


MODELS_OPTION = click.option(
    "--models", "models_dir", envvar="GUITARS_MODELS", default="models", show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The models folder: one run directory per version (also read from GUITARS_MODELS, as the server does).")


@models_group.command("list")
@MODELS_OPTION
@_fail_clearly
def models_list_command(models_dir):
    """List the runs of the models folder; * marks the promoted one."""
    from .versions import list_runs, read_pointer

    runs = list_runs(models_dir.absolute())
    pointer = read_pointer(models_dir.absolute())
    click.echo(f"  {'run':<24}{'trained at':<27}{'val. acc.':>10}  sha256")
    for run in runs:
        accuracy = "-" if run.accuracy is None else f"{run.accuracy:.4f}"
        click.echo(f"{'*' if run.promoted else ' '} {run.name:<24}{run.trained_at or '-':<27}{accuracy:>10}  "
                   f"{(run.sha256 or '-')[:12]}")
    if pointer is None:
        click.echo(f"No run is promoted yet in {models_dir}.")
    else:
        earlier = " <- ".join(v.run for v in reversed(pointer.history))
        click.echo(f"Promoted: {pointer.current.run} (since {pointer.promoted_at})"
                   + (f"; rollback restores {earlier}" if earlier else ""))


@models_group.command("promote")
@click.argument("run")
@MODELS_OPTION
@click.option("--against", "against", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A fixed labelled folder (DATA/<class>/...) to score the candidate and the serving run on.")
@click.option("--force", metavar="REASON", help="Promote even if the gate refuses, or without --against; logged.")
@click.option("--runtime", default="auto", show_default=True, type=click.Choice(RUNTIMES),
              help="The runtime both models are scored with (the server's GUITARS_RUNTIME).")
@_fail_clearly
def models_promote_command(run, models_dir, against, force, runtime):
    """Serve RUN (a run of the models folder) if it is not worse than the serving one on --against."""
    from .gate import promote
    from .versions import LOG

    decision = promote(models_dir.absolute(), run, against, force, runtime, progress=sys.stderr.isatty())
    entry = decision.entry
    if decision.comparison is not None:
        click.echo(f"{entry['run']} (candidate) against {entry['serving']} (serving) on {against}:")
        click.echo(decision.comparison.summary())
    for reason in decision.refusals:
        click.echo(f"Refused: {reason}" if not decision.promoted else f"Overridden (--force): {reason}")
    if not decision.promoted:
        raise click.ClickException(f"{entry['run']} was not promoted (refused by the gate, logged); --force REASON "
                                   f"overrides it, and is logged too")
    click.echo(f"Promoted {entry['run']}" + (f" (was {entry['serving']})" if entry["serving"] else "")
               + f"; logged in {models_dir / LOG}")


@models_group.command("rollback")
@MODELS_OPTION
@_fail_clearly
def models_rollback_command(models_dir):
    """Serve the run promoted before the current one again."""
    from .versions import rollback

    restored, dropped = rollback(models_dir.absolute())
    click.echo(f"Rolled back from {dropped.run} to {restored.run}")


COMMANDS = [train_command, evaluate_command, predict_command, dataset_group, models_group]


@click.group()
def main():
    """guitar-classifier training commands (the same as `flask --app wsgi ...`)."""


for _command in COMMANDS:
    main.add_command(_command)
