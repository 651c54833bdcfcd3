"""The traffic people send, as lists of photos: easy, hard and out-of-scope ones, and a blend of the three."""
from __future__ import annotations

from pathlib import Path

from training.runfiles import RunFileError, model_file, validation_paths

# The served bf16 runtime keeps its answer at or above this top probability and recomputes below it in fp32.
SURE = 0.99
BLEND = {"easy": 0.60, "hard": 0.25, "out-of-scope": 0.15}  # stated in the README


def round_robin(folder: Path, paths: list[Path]) -> list[Path]:
    """`paths` ordered one per class folder in turn, so any prefix spreads over the classes."""
    by_class: dict[str, list[Path]] = {}
    for path in sorted(paths):
        by_class.setdefault(path.relative_to(folder).parts[0], []).append(path)
    queues = list(by_class.values())
    return [queue[k] for k in range(max(map(len, queues), default=0)) for queue in queues if k < len(queue)]


def validation_photos(model: str, folder: Path) -> list[Path]:
    """The run's validation photos found in `folder` (every photo there when the run has no split file)."""
    from training.predict_files import expand_paths

    try:
        held_out = validation_paths(model_file(model).parent)
    except RunFileError:  # a bare export.pkl: no split to take the validation photos from
        held_out = set()
    paths = [folder / path for path in held_out if (folder / path).exists()]
    return round_robin(folder, paths or expand_paths([folder]))


def fp32_predictor(model: str):
    """The model with an fp32 runtime, to say which photos the served runtime is sure of."""
    from training.inference import ModelLoadError, Predictor

    try:
        return Predictor.load(model, runtime="openvino")
    except ModelLoadError:
        return Predictor.load(model, runtime="torch")


def split_by_confidence(predictor, photos: list[Path], count: int) -> tuple[list[Path], list[Path]]:
    """The first `count` photos the model is sure of (top probability >= SURE) and the first `count` it is not."""
    from training.imaging import ImageError, open_image

    easy, hard = [], []
    for path in photos:
        if len(easy) >= count and len(hard) >= count:
            break
        try:
            top = float(predictor.probabilities([open_image(path)])[0].max())
        except ImageError:
            continue
        (easy if top >= SURE else hard).append(path)
    return easy[:count], hard[:count]


def blend(mixes: dict[str, list[Path]], count: int) -> list[Path]:
    """`count` requests drawn from the mixes in BLEND's shares, interleaved evenly (as traffic would arrive)."""
    slots = []
    for name, share in BLEND.items():
        n = round(share * count)
        slots += [((k + 0.5) / n, mixes[name][k % len(mixes[name])]) for k in range(n) if mixes.get(name)]
    return [path for _, path in sorted(slots, key=lambda slot: slot[0])]


def traffic(model: str, folder: Path, ood: Path | None, count: int) -> dict[str, list[Path]]:
    """The photo lists to benchmark with: easy, hard, out-of-scope and the blend; just "photos" without OOD photos."""
    from training.predict_files import expand_paths

    photos = validation_photos(model, folder)
    if ood is None or not ood.is_dir():
        return {"photos": photos[:count]}
    easy, hard = split_by_confidence(fp32_predictor(model), photos, count)
    mixes = {"easy": easy, "hard": hard, "out-of-scope": round_robin(ood, expand_paths([ood]))[:count]}
    mixes["blend"] = blend(mixes, 2 * count)
    return {mix: images for mix, images in mixes.items() if images}  # e.g. no easy photos for an untrained model
