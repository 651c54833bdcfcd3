"""What isolated decoding costs per photo: the decoder processes against decoding in the worker, interleaved.

    python -m bench.decode [--rounds 30]
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from training.decoding import MAX_PIXELS, open_image
from training.devices import cpu_class
from webapp.decoders import DecoderPool

GUITARS = Path(__file__).resolve().parents[2] / "shared" / "data" / "guitars"


def photo_sets() -> dict[str, list[bytes]]:
    """A few real 299-px photos when the data is here, and a 12-megapixel camera-like JPEG."""
    rng = np.random.default_rng(0)
    noise = (rng.random((3000, 4000, 3)) * 60 + np.linspace(0, 180, 4000)[None, :, None]).astype(np.uint8)
    phone = io.BytesIO()
    Image.fromarray(noise).save(phone, format="JPEG", quality=90)
    sets = {"12 MP JPEG": [phone.getvalue()]}
    real = sorted(GUITARS.rglob("*.jpg"))[:: 500][:16]
    if real:
        sets["299 px guitar photos"] = [path.read_bytes() for path in real]
    return sets


def timed(decode, photos: list[bytes]) -> float:
    """Seconds per photo for one pass over `photos`."""
    started = time.perf_counter()
    for data in photos:
        decode(data)
    return (time.perf_counter() - started) / len(photos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    pool = DecoderPool(workers=1, memory_mb=1024, max_pixels=MAX_PIXELS)
    ways = {
        "in the worker": lambda data: open_image(data),
        "decoder process": lambda data: pool.decode(data, MAX_PIXELS, 30),
        "in the worker, full size (before #27)": lambda data: open_image(data, max_side=100_000),
    }
    print(f"CPU class: {cpu_class()}; one decoder process; {args.rounds} interleaved rounds; median per photo")
    for name, photos in photo_sets().items():
        times = {way: [] for way in ways}
        for _ in range(args.rounds):
            for way, decode in ways.items():  # each round runs every way once, so drift lands on all alike
                times[way].append(timed(decode, photos))
        base = statistics.median(times["in the worker"])
        for way, values in times.items():
            median = statistics.median(values)
            print(f"  {name:<22} {way:<40} {median * 1000:8.2f} ms  {median / base:5.2f}x")
    pool.close()


if __name__ == "__main__":
    main()
