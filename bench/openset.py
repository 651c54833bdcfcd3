"""Open-set scores side by side on a trained run: its validation photos (in scope) against photos of none of its classes.

    python -m bench.openset RUN_DIR DATA_DIR OOD_DIR

Each score is thresholded to keep 95% of the validation photos, as the shipped detector is; OOD_DIR's sub-folders
(e.g. near/, far/) are reported apart. Features are cached in RUN_DIR/openset_features.npz and the ImageNet check's
logits in RUN_DIR/openset_imagenet.npz (delete both after retraining).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from training.inference import Predictor
from training.openset import (
    DEFAULT_KEEP,
    IMAGENET_CLASSES,
    ImageNetCheck,
    feature_forward,
    fit_scope,
    image_features,
    profile_scores,
    softmax,
)
from training.predict_files import expand_paths
from training.runfiles import read_split
from training.runtimes import make_forward

KNN_KS = (1, 10, 50)


def photo_sets(run: Path, data: Path, ood: Path) -> dict[str, list[Path]]:
    """The run's training and validation photos, and each sub-folder of OOD_DIR."""
    split = read_split(run)
    paths = {"train": [data / p for p in split.paths(valid=False)], "valid": [data / p for p in split.paths(valid=True)]}
    for group in sorted(p for p in ood.iterdir() if p.is_dir()):
        paths[group.name] = expand_paths([group])
    return paths


def load_features(run: Path, data: Path, ood: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Logits and penultimate features of the training, validation and out-of-scope photos (cached)."""
    cache = run / "openset_features.npz"
    if cache.exists():
        stored = np.load(cache)
        return {name: (stored[f"{name}_logits"], stored[f"{name}_features"]) for name in
                {key.rsplit("_", 1)[0] for key in stored.files if not key.endswith("_categories")}}
    predictor = Predictor.load(run, runtime="torch")
    n_classes = len(predictor.classes)
    forward = feature_forward(predictor.model, predictor.size, n_classes)  # as training fits the shipped detector
    paths = photo_sets(run, data, ood)
    sets = {}
    for name, files in paths.items():
        started = time.perf_counter()
        sets[name] = image_features(forward, files, predictor.size, predictor.mean, predictor.std, n_classes)
        print(f"{name}: {len(files)} photos, {time.perf_counter() - started:.0f} s", flush=True)
    categories = {f"{n}_categories": np.array([p.parent.name for p in files]) for n, files in paths.items()
                  if n not in ("train", "valid")}
    np.savez(cache, **categories,
             **{f"{n}_{k}": v[i] for n, v in sets.items() for i, k in enumerate(("logits", "features"))})
    return sets


def imagenet_logits(run: Path, data: Path, ood: Path) -> dict[str, np.ndarray]:
    """The ImageNet check's logits of every set, at the model's size and normalisation, as training computes them."""
    cache = run / "openset_imagenet.npz"
    if cache.exists():
        return dict(np.load(cache))
    predictor = Predictor.load(run, runtime="torch")
    forward = make_forward(ImageNetCheck(predictor.mean, predictor.std).eval(), predictor.size, "openvino")[1]
    paths = photo_sets(run, data, ood)
    logits = {name: image_features(forward, files, predictor.size, predictor.mean, predictor.std, IMAGENET_CLASSES)[0]
              for name, files in paths.items()}
    np.savez(cache, **logits)
    return logits


def normalise(features: np.ndarray) -> np.ndarray:
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-8)


def vim_score(run: Path, train_features: np.ndarray):
    """ViM (Wang et al., CVPR 2022): energy minus a virtual logit, the feature's norm outside the training features'
    principal subspace (half the dimensions), measured from the origin the last layer implies."""
    from training.openset import split_head

    _, last = split_head(Predictor.load(run, runtime="torch").model)
    weight = last.weight.detach().double().numpy()
    bias = np.zeros(len(weight)) if last.bias is None else last.bias.detach().double().numpy()
    origin = -np.linalg.pinv(weight) @ bias
    centred = train_features - origin
    _, vectors = np.linalg.eigh(centred.T @ centred / len(centred))  # ascending eigenvalues
    null_space = vectors[:, : train_features.shape[1] // 2]
    train_logits = train_features @ weight.T + bias
    alpha = train_logits.max(1).mean() / np.linalg.norm(centred @ null_space, axis=1).mean()

    def score(logits, features):
        virtual = alpha * np.linalg.norm((features - origin) @ null_space, axis=1)
        energy = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        return energy - virtual

    return score


def main(run: Path, data: Path, ood: Path) -> None:
    sets = load_features(run, data, ood)
    imagenet = imagenet_logits(run, data, ood)
    train_logits, train_features = sets.pop("train")
    split = read_split(run)
    classes = sorted({row.label for row in split.rows})
    train_labels = np.array([classes.index(row.label) for row in split.rows if not row.is_valid])
    scores = {
        "max softmax probability": lambda lg, ft: softmax(lg).max(1),
        "max logit": lambda lg, ft: lg.max(1),
        "energy": lambda lg, ft: np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1),
    }
    scores["ViM"] = vim_score(run, train_features)
    features_only = fit_scope(train_features, train_labels, sets["valid"][1])
    scores["Mahalanobis alone"] = lambda lg, ft: features_only.scores(ft)
    shipped = fit_scope(train_features, train_labels, sets["valid"][1], train_imagenet=imagenet["train"],
                        valid_imagenet=imagenet["valid"])
    check_of = {id(sets[name][1]): imagenet[name] for name in sets}  # each set's check logits, by its features
    scores["ImageNet profile alone"] = lambda lg, ft: profile_scores(check_of[id(ft)], shipped.profile_weights)
    scores["Mahalanobis + ImageNet (shipped)"] = lambda lg, ft: shipped.scores(ft, profile_scores(check_of[id(ft)],
                                                                                                   shipped.profile_weights))
    bank = normalise(train_features)
    for k in KNN_KS:  # Sun et al. 2022: cosine similarity to the k-th nearest normalised training feature
        scores[f"kNN k={k}"] = lambda lg, ft, k=k: -np.partition(-(normalise(ft) @ bank.T), k - 1, axis=1)[:, k - 1]
    groups = [name for name in sets if name != "valid"]
    header = f"{'score':<34}" + "".join(f"{'AUROC ' + g:>16}{'rejected ' + g:>16}" for g in groups)
    print(f"\nIn scope: {len(sets['valid'][0])} validation photos; threshold keeps {DEFAULT_KEEP:.0%} of them\n{header}")
    for name, score in scores.items():
        valid = score(*sets["valid"])
        threshold = np.quantile(valid, 1 - DEFAULT_KEEP)
        row = f"{name:<34}"
        for group in groups:
            other = score(*sets[group])
            labels = np.r_[np.ones(len(valid)), np.zeros(len(other))]
            row += f"{roc_auc_score(labels, np.r_[valid, other]):>16.4f}{(other < threshold).mean():>16.1%}"
        print(row)
    stored = np.load(run / "openset_features.npz")
    for group in groups:
        categories = stored[f"{group}_categories"]
        rejected = ~shipped.in_scope(scores["Mahalanobis + ImageNet (shipped)"](*sets[group]))
        print(f"\nShipped detector, {group}, by category: " + ", ".join(
            f"{c} {rejected[categories == c].mean():.0%} of {(categories == c).sum()}" for c in np.unique(categories)))
    print("\n" + served_cost(run, shipped))


def served_cost(run: Path, detector, repeats: int = 20) -> str:
    """Milliseconds per photo of the served forward (OpenVINO) without and with the ImageNet check, side by side."""
    import torch

    from training.openset import ImageNetProfile, WithFeatures

    predictor = Predictor.load(run, runtime="torch")
    plain = WithFeatures(predictor.model).eval()
    checked = WithFeatures(predictor.model, ImageNetProfile(ImageNetCheck(predictor.mean, predictor.std),
                                                            detector.profile_weights)).eval()
    line = []
    for batch_size in (1, 8):
        batch = torch.randn(batch_size, 3, predictor.size, predictor.size)
        timings = {}
        for name, net in (("without", plain), ("with", checked)):
            forward = make_forward(net, predictor.size, "openvino", n_classes=len(predictor.classes))[1]
            forward(batch)
            started = time.perf_counter()
            for _ in range(repeats):
                forward(batch)
            timings[name] = (time.perf_counter() - started) / repeats / batch_size * 1000
        line.append(f"batch {batch_size}: {timings['without']:.1f} ms -> {timings['with']:.1f} ms a photo "
                    f"({timings['with'] / timings['without']:.2f}x)")
    return "Served forward (OpenVINO fp32), without -> with the ImageNet check: " + "; ".join(line)


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:4]))

