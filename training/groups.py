"""The group answer: "a Fender, not sure which model", given when the summed probability of a group is reliable."""
from __future__ import annotations

import numpy as np

from .classnames import ClassGroup

MIN_GROUP_ANSWERS = 5  # validation photos behind a fitted group line; fewer and the group is never shown as sure


def group_matrix(groups: list[ClassGroup], classes: list[str]) -> np.ndarray:
    """(C, G) indicator of each class's group, so class probabilities @ it are group probabilities."""
    matrix = np.zeros((len(classes), len(groups)), dtype=np.float32)
    for g, group in enumerate(groups):
        for member in group.classes:
            matrix[classes.index(member), g] = 1.0
    return matrix


def top_groups(probabilities: np.ndarray, groups: list[ClassGroup], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Each photo's most likely group (index into `groups`) and its summed probability."""
    summed = np.asarray(probabilities, dtype=np.float64) @ group_matrix(groups, classes)
    best = summed.argmax(axis=1)
    return best, summed[np.arange(len(summed)), best]


def group_targets(targets: np.ndarray, groups: list[ClassGroup], classes: list[str]) -> np.ndarray:
    """Each photo's true group index, -1 for a class in no group."""
    owner = group_matrix(groups, classes)
    in_group = owner.any(axis=1)
    return np.where(in_group[targets], owner.argmax(axis=1)[targets], -1)


def fit_group_line(probabilities: np.ndarray, targets: np.ndarray, groups: list[ClassGroup], classes: list[str],
                   unsure_below: float) -> float | None:
    """The lowest group probability at which the group answers given for "not sure" class answers are right at least
    as often as the sure class answers are, on the validation split; None when no line gets there."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets)
    confident = probabilities.max(axis=1) >= unsure_below
    if not confident.any() or not groups:
        return None
    sure_accuracy = float((probabilities[confident].argmax(axis=1) == targets[confident]).mean())
    best, summed = top_groups(probabilities[~confident], groups, classes)
    right = best == group_targets(targets[~confident], groups, classes)
    order = np.argsort(-summed)  # lines from high to low: each admits the photos above it
    values, right_above = summed[order], np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    line = None
    for count, (accuracy, value) in enumerate(zip(right_above, values), start=1):
        last_of_its_value = count == len(values) or values[count] < value  # a line admits every tie at once
        if count >= MIN_GROUP_ANSWERS and accuracy >= sure_accuracy and last_of_its_value:
            line = float(value)
    return line


def group_figures(probabilities: np.ndarray, targets: np.ndarray, groups: list[ClassGroup], classes: list[str],
                  unsure_below: float, group_line: float | None) -> dict:
    """Group accuracy over all photos of grouped classes; among the "not sure" class answers, the share answered by
    a sure group (coverage) and how often that group is right."""
    probabilities, targets = np.asarray(probabilities), np.asarray(targets)
    truth = group_targets(targets, groups, classes)
    best, summed = top_groups(probabilities, groups, classes)
    grouped = truth >= 0
    unsure = probabilities.max(axis=1) < unsure_below
    answered = unsure & grouped & (summed >= group_line) if group_line is not None else np.zeros_like(unsure)
    pool = unsure & grouped

    def share(mask) -> float | None:
        return round(float(mask.mean()), 4) if mask.size else None

    return {"accuracy": share((best == truth)[grouped]), "n": int(grouped.sum()), "unsure": int(pool.sum()),
            "coverage": share(answered[pool]), "sure_accuracy": share((best == truth)[answered]),
            "line": group_line}
