"""How far bf16 moves the served graph's answers, and what the fp32 guard lets through, on a trained run's photos.

    python -m bench.bf16 RUN_DIR DATA_DIR OOD_DIR

Every validation photo and every photo in OOD_DIR's sub-folders goes through the served graph (the model, its
features and the ImageNet check) in OpenVINO fp32 and bf16, one photo a call. For each set it prints the largest
shifts (logit gap, probability, scope score), how often bf16 alone keeps each decision, what the shipped guard
(`BF16_CONFIDENT`, `BF16_SCOPE_MARGIN`) keeps and whether any kept answer changed a decision, and the same for a
decision-aware guard at a few margins (top-1 logit gap, distance to the "not sure" line, to the scope threshold).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from bench.int8 import decisions, one_thread, outputs_per_request, photo_sets
from training.graphs import onnx_bytes
from training.inference import Predictor
from training.runtimes import BF16_CONFIDENT, BF16_SCOPE_MARGIN

# (top-1 logit gap, distance to the "not sure" line, distance to the scope threshold) a decision-aware guard needs
DECISION_MARGINS = ((4.6, 0.1, 2.0), (3.0, 0.06, 1.0), (2.0, 0.05, 0.6))


def fp32_and_bf16(predictor: Predictor) -> dict:
    """Infer requests for the served graph in fp32 and in bf16, one thread each."""
    import openvino

    core = openvino.Core()
    model = core.read_model(onnx_bytes(predictor.served, predictor.size))
    return {precision: one_thread(core, model, precision).create_infer_request() for precision in ("f32", "bf16")}


def report_set(predictor: Predictor, name: str, outputs: dict[str, np.ndarray]) -> None:
    """Print one set's shifts, bf16's own agreement and what each guard keeps."""
    n, threshold, line = len(predictor.classes), predictor.scope.threshold, predictor.unsure_below
    exact, fast = decisions(predictor, outputs["f32"]), decisions(predictor, outputs["bf16"])
    exact_scores, fast_scores = (predictor.scope_scores(outputs[precision][:, n:]) for precision in ("f32", "bf16"))
    shift = outputs["f32"][:, :n] - outputs["bf16"][:, :n]
    gap_shift, score_shift = shift.max(1) - shift.min(1), np.abs(exact_scores - fast_scores)
    changed = (exact[0] != fast[0]) | (exact[1] != fast[1]) | (exact[2] != fast[2])
    print(f"{name} ({len(gap_shift)}): logit gap moved by up to {gap_shift.max():.2f} (p99 "
          f"{np.quantile(gap_shift, 0.99):.2f}), a probability by {np.abs(exact[3] - fast[3]).max():.3f}, the scope "
          f"score by {score_shift.max():.2f} (spread {exact_scores.std():.2f}); bf16 alone keeps top-1 "
          f"{np.mean(exact[0] == fast[0]):.2%}, 'not sure' {np.mean(exact[1] == fast[1]):.2%}, scope "
          f"{np.mean(exact[2] == fast[2]):.2%}")
    confident = fast[3].max(1) >= BF16_CONFIDENT
    for label, kept in (("confident only (before)", confident),
                        ("shipped guard", confident & (np.abs(fast_scores - threshold) >= BF16_SCOPE_MARGIN))):
        print(f"  {label}: keeps bf16 for {kept.mean():.2%}, with a changed decision {int((kept & changed).sum())}"
              f"; largest score shift kept {score_shift[kept].max() if kept.any() else 0:.2f}")
    ordered = np.sort(outputs["bf16"][:, :n], axis=1)
    top_gap = ordered[:, -1] - ordered[:, -2]
    for gap, distance, scope in DECISION_MARGINS:
        kept = (top_gap > gap) & (np.abs(fast[3].max(1) - line) > distance) & (np.abs(fast_scores - threshold) > scope)
        print(f"  decision-aware at {gap} / {distance} / {scope}: keeps bf16 for {kept.mean():.2%}, with a changed "
              f"decision {int((kept & changed).sum())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("ood", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    predictor = Predictor.load(args.run, runtime="torch")
    requests = fp32_and_bf16(predictor)
    print(f"'not sure' below {predictor.unsure_below}, scope threshold {predictor.scope.threshold:.3f}", flush=True)
    for name, paths in photo_sets(args.run, args.data, args.ood).items():
        report_set(predictor, name, outputs_per_request(predictor, requests, paths))


if __name__ == "__main__":
    main()
