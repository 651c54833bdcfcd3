"""Run both benchmarks and write bench/RESULTS.md with the machine, the date and the figures.

The whole file is generated, except the hand-written notes between NOTES_BEGIN and NOTES_END, which a re-run keeps.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
RUNTIME_NAMES = {"torch": "PyTorch", "onnx": "ONNX Runtime", "openvino": "OpenVINO",
                 "openvino-bf16": "OpenVINO bf16 (fp32 below 0.99 confidence)"}
NOTES_BEGIN = "<!-- notes: written by hand; `python -m bench.report` keeps everything from here to the end marker -->"
NOTES_END = "<!-- end of notes -->"
EMPTY_NOTES = f"{NOTES_BEGIN}\n## Notes\n\n{NOTES_END}\n"


def cpu_name() -> str:
    """The CPU's model name."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def cpu_line(measured: dict) -> str:
    """The machine a table was measured on, with its CPU class (what bf16 costs there depends on it)."""
    return (f"CPU class: **{measured['cpu_class']}** ({measured['cpu']}, {measured['cores']} cores; from "
            "/proc/cpuinfo: AMX = amx_bf16, AVX-512 bf16 = avx512_bf16, else AVX2-only).")


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


def serving_lines(serve: dict) -> list[str]:
    """The serving section: both apps on every mix and level, the ratios, the bare forward passes."""
    lines = [
        "## Serving: `POST /api/v1/predict`, one image per request",
        "",
        cpu_line(serve),
        "",
        f"Model `{serve['model']}`, photos from `{serve['images']}`"
        + (f" and `{serve['ood']}`" if serve.get("ood") else "") + f", {serve['workers']} gunicorn workers each. "
        "Baseline: Flask + `learn.predict(PILImage.create(bytes))` with default sync workers. Both servers run side by "
        "side; at every mix and concurrency the two are measured back to back, the first of them alternating.",
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
        lines.append(f"- {mix}: throughput ours/baseline by concurrency {ratios} (each from adjacent measurements); "
                     f"top-1 identical to the baseline on every photo: {row['top1_identical']}.")
    served = RUNTIME_NAMES[serve["served_runtime"]]
    return [*lines,
            "- Goals: >= 4x the baseline at concurrency 16 on every mix, >= 5x on the blend.",
            "- Bare forward pass, batch 1, one worker's threads: " + ", ".join(
                f"{RUNTIME_NAMES[k]} {v:.1f} ms" for k, v in serve["bare_forward_ms"].items())
            + f"; we serve with {served}, and our p50 at concurrency 1 on the first mix is "
            f"{serve['p50_c1_over_bare']:.2f}x its bare forward (goal: <= 1.3x).",
            *server_time_lines(serve), ""]


def precision_words(precision: str, cpu_class: str) -> str:
    """How ours trained, in words: bf16 autocast where the CPU has native bf16, else fp32."""
    if precision == "bf16":
        return f"under bf16 autocast, channels-last (`--precision auto` on this {cpu_class} CPU)"
    return f"in fp32 (`--precision auto` on this {cpu_class} CPU, which has no native bf16)"


def training_lines(train: dict) -> list[str]:
    """The training section: ours and fastai's default pipeline, one epoch per benchmarked stage."""
    lines = [
        f"## Training: the `{train.get('recipe', 'cpu')}` recipe's frozen stage and its costliest unfrozen stage, "
        "one epoch each",
        "",
        cpu_line(train),
        "",
        f"{train['backbone']} at {' then '.join(map(str, train['sizes']))} px on `{train['data']}` "
        f"({train['per_class']} photos per class, "
        f"{train['ours']['train_images']} for training, {train['ours']['valid_images']} for validation, "
        "duplicate-aware split). Baseline: fastai's default pipeline (`Resize` item transform, `aug_transforms()`, fp32, "
        "`freeze()` / `unfreeze()`); ours is the pipeline a run of the recipe builds (its augmentation: close-ups, "
        "rotation, zoom as it sets them), freezing as it says (`train_bn`, `frozen_groups`), "
        f"{precision_words(train['ours']['precision'], train['cpu_class'])}.",
        "",
        "| pipeline | precision | stage | size | training images/s | validation accuracy |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("ours", "baseline"):
        for row in train[name]["stages"]:
            lines.append(f"| {name} | {train[name]['precision']} | {row['stage']} | {row['size']} | "
                         f"{row['images_per_s']:.1f} | {row['accuracy']:.4f} |")
    return [*lines, "", "Speed-up ours/baseline: " + ", ".join(f"{s:.2f}x" for s in train["speedup"])
            + " (goal: >= 2x).", ""]


def kept_notes(previous: str) -> str:
    """The hand-written notes of the file being replaced, markers included (an empty notes section if none)."""
    if NOTES_BEGIN not in previous or NOTES_END not in previous:
        return EMPTY_NOTES
    return NOTES_BEGIN + previous.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0] + NOTES_END + "\n"


def not_measured(section: str) -> list[str]:
    """A section this version of the scripts has not measured yet."""
    return [f"## {section}", "", "Not measured by this version of the scripts yet: `make bench` writes it here.", ""]


def render(serve: dict | None, train: dict | None, command: str, previous: str = "") -> str:
    """The whole of RESULTS.md: the generated figures (None: not measured), then the notes kept from `previous`."""
    header = ["# Benchmark results", "",
              f"<!-- generated by `{command}`: edit only the notes section below, the rest is rewritten -->", ""]
    if serve or train:
        header += [f"{dt.date.today().isoformat()}; Python {platform.python_version()}. Produced by `{command}` "
                   "(`make bench` runs it on the demo model).", ""]
    sections = [*(serving_lines(serve) if serve else not_measured("Serving")),
                *(training_lines(train) if train else not_measured("Training"))]
    return "\n".join([*header, *sections]) + "\n" + kept_notes(previous)


def run(module: str, out: Path, *extra: str) -> dict:
    """Run one benchmark script and read its JSON, with the machine it ran on."""
    subprocess.run([sys.executable, "-m", module, "--json", str(out), *extra], cwd=ROOT, check=True)
    return {**json.loads(out.read_text()), "cpu": cpu_name(), "cores": os.cpu_count()}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        serve = run("bench.serve", Path(tmp) / "serve.json", *sys.argv[1:2])
        train = run("bench.train", Path(tmp) / "train.json")
    text = render(serve, train, " ".join(["python -m bench.report", *sys.argv[1:]]),
                  RESULTS.read_text() if RESULTS.exists() else "")
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
