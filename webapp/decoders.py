"""Uploads decode in a few child processes, each capped in memory and killed at its deadline: a decoder's worst
case (a runaway parser, a huge allocation, a crash) costs a child, never the serving worker or its other requests."""
from __future__ import annotations

import atexit
import multiprocessing
import threading
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout

from pebble import ProcessExpired, ProcessPool
from PIL import Image

from training.decoding import ImageTooComplex, NotAnImage, decode_to_bytes, prepare_decoder

from .settings import MEGABYTE

WARM_UP = b"P5 1 1 255 \x80"  # the smallest image there is: a 1x1 grey PGM (refused as a format, decoded all the same)
_pools: dict[tuple, DecoderPool] = {}
_pools_lock = threading.Lock()


class DecodeTimeout(ImageTooComplex):
    """Decoding ran past the request's deadline; its process was killed."""


class DecoderPool:
    """`workers` spawned decoder processes (spawn: never a fork of a process running torch's threads)."""

    def __init__(self, workers: int, memory_mb: int, max_pixels: int):
        self._pool = ProcessPool(max_workers=workers, initializer=prepare_decoder,
                                 initargs=(memory_mb * MEGABYTE, max_pixels),
                                 context=multiprocessing.get_context("spawn"))
        # Started now, not by the first upload: a decoder's start-up (a third of a second) must not eat its deadline.
        for future in [self._pool.schedule(decode_to_bytes, (WARM_UP, max_pixels)) for _ in range(workers)]:
            error = future.exception(timeout=60)  # NotAnImage, as expected: what counts is that a decoder answered
            if not isinstance(error, NotAnImage):
                raise RuntimeError(f"the decoder processes did not start: {error!r}")

    def decode(self, data: bytes, max_pixels: int, seconds: float) -> tuple[Image.Image, int]:
        """The upright RGB image and its file's pixel count, or an `ImageError` within `seconds`."""
        future = self._pool.schedule(decode_to_bytes, (data, max_pixels), timeout=seconds)
        try:
            # The pool's own timeout counts from the moment a decoder takes the job; this one includes the wait.
            mode, size, pixels, source_pixels = future.result(timeout=seconds)
        except (FutureTimeout, CancelledError):
            future.cancel()  # a running job's process is killed; pebble starts a fresh one
            raise DecodeTimeout(f"decoding took longer than {seconds:.1f} s, far longer than any photo") from None
        except ProcessExpired as exc:
            raise ImageTooComplex(f"the decoder stopped on it (exit code {exc.exitcode})") from None
        except MemoryError:
            raise ImageTooComplex("decoding it needs more memory than any photo of its size") from None
        return Image.frombytes(mode, size, pixels), source_pixels

    def close(self) -> None:
        """Stop the decoder processes."""
        self._pool.stop()
        self._pool.join(timeout=5)


def decoder_pool(workers: int, memory_mb: int, max_pixels: int) -> DecoderPool:
    """This process's pool for these settings, started on first use (after gunicorn has forked the worker)."""
    key = (workers, memory_mb, max_pixels)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = DecoderPool(*key)
        return _pools[key]


@atexit.register
def _close_pools() -> None:
    for pool in _pools.values():
        pool.close()
