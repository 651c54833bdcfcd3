"""INT8 (NNCF post-training quantisation) of the served graph against OpenVINO fp32 and bf16: speed and agreement.

    python -m bench.int8 RUN_DIR DATA_DIR OOD_DIR [--calibration 300]

The served graph is the model with its scope detector's inputs (features and the ImageNet check), exported as the
server does. It is quantised with photos from the run's training split, then every validation photo and every photo
in OOD_DIR's sub-folders goes through fp32, bf16 and INT8 alone (no fp32 guard), one at a time: top-1, "not sure"
and in-scope decisions of each are compared with fp32's.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from training.graphs import onnx_bytes
from training.imaging import open_image, to_batch
from training.inference import Predictor
from training.predict_files import expand_paths
from training.runfiles import read_split


def compile_all(predictor: Predictor, calibration: list[Path]) -> dict:
    """The served graph compiled in fp32, bf16 and INT8 (quantised on `calibration`), one thread each."""
    import nncf
    import openvino

    core = openvino.Core()
    model = core.read_model(onnx_bytes(predictor.served, predictor.size))
    batches = [to_batch([open_image(p)], predictor.size, predictor.mean, predictor.std).numpy() for p in calibration]
    started = time.perf_counter()
    quantised = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches))
    print(f"quantised in {time.perf_counter() - started:.0f} s", flush=True)

    return {"fp32": one_thread(core, model, "f32"), "bf16": one_thread(core, model, "bf16"),
            "int8": one_thread(core, quantised, "f32")}


def one_thread(core, graph, precision: str):
    """`graph` compiled for the CPU in `precision` with one thread, as the benchmarks compare runtimes."""
    return core.compile_model(graph, "CPU", {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": 1,
                                             "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False})


def photo_sets(run: Path, data: Path, ood: Path) -> dict[str, list[Path]]:
    """The run's validation photos, then each sub-folder of `ood`."""
    sets = {"valid": [data / path for path in read_split(run).paths(valid=True)]}
    sets.update({group.name: expand_paths([group]) for group in sorted(ood.iterdir()) if group.is_dir()})
    return sets


def outputs_per_request(predictor: Predictor, requests: dict, paths: list[Path]) -> dict[str, np.ndarray]:
    """Each infer request's output rows for `paths`, one photo a call."""
    rows = {name: [] for name in requests}
    for path in paths:
        batch = to_batch([open_image(path)], predictor.size, predictor.mean, predictor.std).numpy()
        for name, request in requests.items():
            request.infer({0: batch})
            rows[name].append(request.get_output_tensor(0).data.copy()[0])
    return {name: np.stack(found) for name, found in rows.items()}


def decisions(predictor: Predictor, output: np.ndarray):
    """Top-1, "not sure", in scope and the probabilities, from the served graph's output rows."""
    n = len(predictor.classes)
    probabilities = torch.softmax(torch.from_numpy(output[:, :n]), dim=1).numpy()
    in_scope = predictor.scope.in_scope(predictor.scope_scores(output[:, n:]))
    return probabilities.argmax(1), probabilities.max(1) < predictor.unsure_below, in_scope, probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("ood", type=Path)
    parser.add_argument("--calibration", type=int, default=300, help="training photos to quantise with")
    args = parser.parse_args()
    torch.set_num_threads(1)
    predictor = Predictor.load(args.run, runtime="torch")
    train = [args.data / path for path in read_split(args.run).paths(valid=False)]
    sets = photo_sets(args.run, args.data, args.ood)
    pick = np.random.default_rng(0).choice(len(train), min(args.calibration, len(train)), replace=False)
    compiled = compile_all(predictor, [train[i] for i in pick])

    requests = {name: graph.create_infer_request() for name, graph in compiled.items()}
    probe = to_batch([open_image(sets["valid"][0])], predictor.size, predictor.mean, predictor.std).numpy()
    for name, request in requests.items():
        for _ in range(5):
            request.infer({0: probe})
        started = time.perf_counter()
        for _ in range(40):
            request.infer({0: probe})
        print(f"{name}: {(time.perf_counter() - started) / 40 * 1000:.1f} ms a photo", flush=True)
    for set_name, paths in sets.items():
        outputs = outputs_per_request(predictor, requests, paths)
        reference = decisions(predictor, outputs["fp32"])
        for name in ("int8", "bf16"):
            other = decisions(predictor, outputs[name])
            print(f"{set_name} ({len(paths)}), {name} against fp32: top-1 same {np.mean(reference[0] == other[0]):.2%}, "
                  f"'not sure' same {np.mean(reference[1] == other[1]):.2%}, in scope same "
                  f"{np.mean(reference[2] == other[2]):.2%}, largest probability change "
                  f"{np.abs(reference[3] - other[3]).max():.3f}", flush=True)


if __name__ == "__main__":
    main()
