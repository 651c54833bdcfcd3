"""Run both benchmarks and write bench/RESULTS.md with the machine, the date and the figures."""
from __future__ import annotations

import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
RUNTIME_NAMES = {"torch": "PyTorch", "onnx": "ONNX Runtime", "openvino": "OpenVINO",
                 "openvino-bf16": "OpenVINO bf16 (fp32 below 0.99 confidence)"}
NOTES_HEADING = "## Notes"


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def server_time_lines(serve: dict) -> list[str]:
    """Where our p50 at concurrency 1 goes, from the app's Server-Timing header."""
    level = next(iter(serve["mixes"].values()))["apps"]["ours"]["levels"][0]
    parts = level.get("server_p50_ms") or {}
    if not parts:
        return []
    rest = level["p50_ms"] - sum(parts.values())
    return [f"- Our p50 at concurrency {level['concurrency']} ({level['p50_ms']:.1f} ms), by the app's Server-Timing "
            f"header: decoding {parts['decode']:.1f} ms, preprocessing and model {parts['model']:.1f} ms, the rest "
            f"(HTTP, multipart parsing, Flask, JSON, the client) {rest:.1f} ms."]


def mix_lines(serve: dict) -> list[str]:
    """What each mix of photos is."""
    if not serve.get("blend"):
        return []
    blend = ", ".join(f"{share:.0%} {mix}" for mix, share in serve["blend"].items())
    counts = ", ".join(f"{mix} {row['requests_from']}" for mix, row in serve["mixes"].items())
    return ["", "Mixes (distinct photos): " + counts + ". Easy: validation photos the model is sure of (top "
            "probability >= 0.99, where the served bf16 answer is kept); hard: validation photos below that, wrong ones "
            f"included (each costs a bf16 and an fp32 pass); out-of-scope: photos of none of the classes; blend: {blend}."]


def run(module: str, out: Path, *extra: str) -> dict:
    subprocess.run([sys.executable, "-m", module, "--json", str(out), *extra], cwd=ROOT, check=True)
    return json.loads(out.read_text())


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        serve = run("bench.serve", Path(tmp) / "serve.json", *sys.argv[1:2])
        train = run("bench.train", Path(tmp) / "train.json")
    import os

    lines = [
        "# Benchmark results",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores; {dt.date.today().isoformat()}; "
        f"Python {platform.python_version()}. Produced by `{' '.join(['python -m bench.report', *sys.argv[1:]])}` "
        "(`make bench` runs it on the demo model).",
        "",
        "## Serving: `POST /api/v1/predict`, one image per request",
        "",
        f"Model `{serve['model']}`, photos from `{serve['images']}`"
        + (f" and `{serve['ood']}`" if serve.get("ood") else "") + f", {serve['workers']} gunicorn workers each. "
        "Baseline: Flask + `learn.predict(PILImage.create(bytes))` with default sync workers.",
        *mix_lines(serve),
        "",
        "| mix | app | concurrency | images/s | p50 ms | p95 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mix, row in serve["mixes"].items():
        for name, app in row["apps"].items():
            for level in app["levels"]:
                lines.append(f"| {mix} | {name} | {level['concurrency']} | {level['images_per_s']:.1f} | "
                             f"{level['p50_ms']:.0f} | {level['p95_ms']:.0f} | {level['p99_ms']:.0f} | {level['errors']} |")
    lines.append("")
    for mix, row in serve["mixes"].items():
        ratios = ", ".join(f"{c}: {r:.2f}x" for c, r in row["throughput_ratio"].items())
        lines.append(f"- {mix}: throughput ours/baseline by concurrency {ratios}; top-1 identical to the baseline on "
                     f"every photo: {row['top1_identical']}.")
    lines += [
        "- Goals: >= 4x the baseline at concurrency 16 on every mix, >= 5x on the blend.",
        "- Bare forward pass, batch 1, one worker's threads: " + ", ".join(
            f"{RUNTIME_NAMES[k]} {v:.1f} ms" for k, v in serve["bare_forward_ms"].items())
        + f"; we serve with {RUNTIME_NAMES[serve['served_runtime']]}, and our p50 at concurrency 1 on the first mix is "
        f"{serve['p50_c1_over_bare']:.2f}x its bare forward (goal: <= 1.3x).",
        *server_time_lines(serve),
        "",
        "## Training: the `cpu` recipe's frozen stage and its costliest unfrozen stage, one epoch each",
        "",
        f"{train['backbone']} at {' then '.join(map(str, train['sizes']))} px on `{train['data']}` "
        f"({train['per_class']} photos per class, "
        f"{train['ours']['train_images']} for training, {train['ours']['valid_images']} for validation, "
        "duplicate-aware split). Baseline: fastai's default pipeline (`Resize` item transform, `aug_transforms()`, fp32, "
        "`freeze()` / `unfreeze()`); ours freezes as the recipe says (`train_bn`, `frozen_groups`) under bf16 autocast.",
        "",
        "| pipeline | stage | size | training images/s | validation accuracy |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in ("ours", "baseline"):
        for row in train[name]["stages"]:
            lines.append(f"| {name}{' (bf16)' if train[name]['bf16'] else ' (fp32)'} | {row['stage']} | {row['size']} | "
                         f"{row['images_per_s']:.1f} | {row['accuracy']:.4f} |")
    lines += ["", "Speed-up ours/baseline: " + ", ".join(f"{s:.2f}x" for s in train["speedup"]) + " (goal: >= 2x).", ""]
    text = "\n".join(lines)
    if RESULTS.exists() and NOTES_HEADING in RESULTS.read_text():  # hand-written notes survive a re-run
        text += "\n" + NOTES_HEADING + RESULTS.read_text().split(NOTES_HEADING, 1)[1]
    RESULTS.write_text(text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
