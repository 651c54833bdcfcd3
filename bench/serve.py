"""Serving benchmark: our gunicorn app vs the Flask + learn.predict baseline, same model, images and machine.

Both servers run side by side and every load level is measured on both back to back, the order alternating, so
each ratio comes from adjacent measurements rather than from runs minutes apart.

Usage: .venv/bin/python -m bench.serve [--model runs/demo] [--images DIR] [--ood DIR] [--json out.json]

With photos of none of the classes (--ood), it measures the traffic people send apart (bench/traffic.py): easy
photos (the model's top probability >= 0.99), hard ones (below, wrong ones included), out-of-scope ones, and a blend.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
import torch

from training.devices import cpu_class

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "guitars"
OOD = ROOT.parent / "shared" / "data" / "ood-dev"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """A gunicorn process on a free loopback port."""

    def __init__(self, app: str, args_for_port, model: str, workers: int):
        self.port = free_port()
        args = args_for_port(self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "GUITARS_MODEL": model, "GUITARS_BIND": f"127.0.0.1:{self.port}",
               "GUITARS_WORKERS": str(workers), "GUITARS_LOG_LEVEL": "warning", "PYTHONPATH": str(ROOT)}
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.proc = subprocess.Popen([str(gunicorn), *args, app], cwd=ROOT, env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait(self, probe: Path, deadline: float = 180) -> None:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            try:
                if post(self.url, probe)[0] == 200:
                    return
            except requests.RequestException:
                time.sleep(0.5)
        raise RuntimeError(f"server at {self.url} did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def post(url: str, path: Path) -> tuple[int, float, str, dict[str, float]]:
    """Status, latency, top-1 label, and the server's own timings in ms (our app's Server-Timing header)."""
    started = time.perf_counter()
    response = requests.post(url + "/api/v1/predict", files={"file": (path.name, path.read_bytes())}, timeout=300)
    elapsed = time.perf_counter() - started
    label = response.json()["results"][0]["predictions"][0]["label"] if response.status_code == 200 else ""
    header = response.headers.get("Server-Timing", "")
    timings = {name: float(ms) for name, ms in (part.split(";dur=") for part in header.split(", ") if ";dur=" in part)}
    return response.status_code, elapsed, label, timings


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def load_test(url: str, images: list[Path], concurrency: int, total: int) -> dict:
    jobs = [images[k % len(images)] for k in range(total)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda p: post(url, p), jobs))
    wall = time.perf_counter() - started
    latencies = [o[1] for o in outcomes]
    server = {name: statistics.median(o[3][name] for o in outcomes) for name in outcomes[0][3]}
    return {"concurrency": concurrency, "requests": total, "errors": sum(o[0] != 200 for o in outcomes),
            "images_per_s": total / wall, "p50_ms": 1000 * statistics.median(latencies),
            "p95_ms": 1000 * percentile(latencies, 95), "p99_ms": 1000 * percentile(latencies, 99),
            "server_p50_ms": server}


def bare_forward_ms(model: str, images: list[Path], threads: int) -> dict[str, float]:
    """The floor: preprocessing excluded, one image per forward pass, same threads as one worker, per runtime."""
    from training.imaging import open_image, to_batch
    from training.inference import ModelLoadError, Predictor
    from training.runtimes import RUNTIMES

    torch.set_num_threads(threads)
    floors = {}
    for runtime in reversed(RUNTIMES[1:]):  # every runtime but "auto", slowest first
        try:
            predictor = Predictor.load(model, runtime=runtime)
        except ModelLoadError as exc:  # e.g. no native bf16 on this CPU
            print(f"bare forward: skipping {runtime}: {exc}", flush=True)
            continue
        batches = [to_batch([open_image(p)], predictor.size, predictor.mean, predictor.std) for p in images[:16]]
        for batch in batches[:3]:
            predictor._forward(batch)
        timings = []
        for batch in batches * 2:
            started = time.perf_counter()
            predictor._forward(batch)
            timings.append(time.perf_counter() - started)
        floors[predictor.runtime] = 1000 * statistics.median(timings)
    return floors


def interleaved(mixes: list[str], levels: list[int], apps: tuple[str, str]) -> list[tuple[str, int, tuple[str, str]]]:
    """(mix, concurrency, order of the two apps) for every measurement: both apps back to back at each point, the
    first of them alternating, so a machine that drifts moves both sides of a ratio alike."""
    points = [(mix, level) for mix in mixes for level in levels]
    return [(mix, level, apps if k % 2 == 0 else apps[::-1]) for k, (mix, level) in enumerate(points)]


def top1_answers(servers: dict[str, Server], mixes: dict[str, list[Path]]) -> dict[str, dict[str, list[str]]]:
    """Each app's top-1 label for every distinct photo of every mix."""
    return {name: {mix: [post(server.url, p)[2] for p in dict.fromkeys(images)] for mix, images in mixes.items()}
            for name, server in servers.items()}


def measure_apps(apps: dict[str, tuple], args, mixes: dict[str, list[Path]]) -> tuple[dict[str, dict], str]:
    """Both apps' top-1 answers and load tests on every mix, from one server each, measured interleaved (see
    `interleaved`); also the runtime our app serves with."""
    levels = list(map(int, args.levels.split(",")))
    servers = {}
    try:
        for name, (app, args_for_port) in apps.items():
            servers[name] = Server(app, args_for_port, args.model, args.workers)
        first = next(iter(mixes.values()))
        for server in servers.values():
            server.wait(first[0])
            for path in first[:4]:  # warm up every worker
                post(server.url, path)
        answers = top1_answers(servers, mixes)
        results = {name: {mix: {"top1": answers[name][mix], "levels": []} for mix in mixes} for name in servers}
        for mix, level, order in interleaved(list(mixes), levels, tuple(servers)):
            for name in order:
                measured = load_test(servers[name].url, mixes[mix], level, max(48, 6 * level))
                results[name][mix]["levels"].append({**measured, "measured_first": name == order[0]})
                print(f"{name}, {mix}, c={level}: {measured['images_per_s']:.1f} img/s p50 {measured['p50_ms']:.0f} ms "
                      f"p95 {measured['p95_ms']:.0f} ms errors {measured['errors']}", flush=True)
        runtime = requests.get(servers["ours"].url + "/api/v1/model", timeout=30).json()["runtime"]
    finally:
        for server in servers.values():
            server.stop()
    return results, runtime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="runs/demo")
    parser.add_argument("--images", type=Path, default=REAL if REAL.is_dir() else ROOT / "demo_data")
    parser.add_argument("--ood", type=Path, default=OOD if OOD.is_dir() else None,
                        help="photos of none of the classes: adds the easy/hard/out-of-scope/blend mixes")
    parser.add_argument("--count", type=int, default=48, help="distinct images per mix")
    parser.add_argument("--levels", default="1,4,16")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from .traffic import BLEND, traffic

    mixes = traffic(args.model, args.images, args.ood, args.count)
    print("mixes: " + ", ".join(f"{mix} {len(images)}" for mix, images in mixes.items()), flush=True)
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    apps = {
        "ours": ("wsgi:app", lambda port: ["-c", "gunicorn.conf.py"]),
        # What the popular templates do: default sync workers, learn.predict per request.
        "baseline": ("bench.baseline_app:app",
                     lambda port: ["-w", str(args.workers), "-b", f"127.0.0.1:{port}", "--timeout", "300"]),
    }
    measured, served_runtime = measure_apps(apps, args, mixes)
    results = {"model": args.model, "images": str(args.images), "ood": str(args.ood) if args.ood else None,
               "blend": BLEND if "blend" in mixes else None, "workers": args.workers,
               "machine": f"{os.cpu_count()} cores", "cpu_class": cpu_class(), "served_runtime": served_runtime,
               "mixes": {}}
    for mix, images in mixes.items():
        ours, base = measured["ours"][mix], measured["baseline"][mix]
        results["mixes"][mix] = {
            "requests_from": len(set(images)), "apps": {"ours": ours, "baseline": base},
            "top1_identical": ours["top1"] == base["top1"],
            # each pair measured back to back (see `interleaved`)
            "throughput_ratio": {lv["concurrency"]: lv["images_per_s"] / bl["images_per_s"]
                                 for lv, bl in zip(ours["levels"], base["levels"])}}
        print(f"{mix}: throughput ours/baseline " + ", ".join(
            f"c={c}: {r:.2f}x" for c, r in results["mixes"][mix]["throughput_ratio"].items())
            + f"; top-1 identical: {results['mixes'][mix]['top1_identical']}")

    first = next(iter(results["mixes"].values()))["apps"]["ours"]["levels"][0]
    results["bare_forward_ms"] = floors = bare_forward_ms(args.model, next(iter(mixes.values())), threads)
    # Judged on the first mix (easy photos) against the floor of the runtime we serve with, not the slower PyTorch one.
    results["p50_c1_over_bare"] = first["p50_ms"] / floors[results["served_runtime"]]
    print(f"bare forward, batch 1, {threads} thread(s): " + ", ".join(f"{k} {v:.1f} ms" for k, v in floors.items()))
    if first["server_p50_ms"]:
        print("ours at c=1, median server-side ms: " + ", ".join(f"{k} {v:.1f}" for k, v in first["server_p50_ms"].items())
              + f"; the rest of the {first['p50_ms']:.1f} ms p50 is HTTP, multipart, Flask, JSON, client")
    print(f"p50 at c=1 / bare forward of the served runtime: {results['p50_c1_over_bare']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
