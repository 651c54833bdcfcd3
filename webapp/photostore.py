"""Photos shared with consent: re-encoded without metadata, under random names, within a quota and a retention."""
from __future__ import annotations

import io
import os
import re
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from flask import Flask, current_app
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from training.fsutil import atomic_path, exclusive

from .db import Answer, utcnow
from .settings import MEGABYTE
from .uploads import UploadError

EXTENSION = "guitars_photos"  # the app's PhotoStore in app.extensions; read it through photo_store()
MAX_SIDE = 1024  # pixels: as much as training reads, and less detail of a person's home than the original
JPEG_QUALITY = 90
NAME = re.compile(r"[0-9a-f]{32}\.jpg")  # the only names the store writes, and so the only ones it opens
LOCK = ".lock"


class StoreFull(UploadError):
    """The shared photos would go past the quota (or no photo is kept here): the request is refused whole."""

    def __init__(self, message: str):
        super().__init__(507, "photo_store_full", message)


def reencode(image: Image.Image) -> bytes:
    """The image as a fresh JPEG of at most MAX_SIDE px: only pixels survive, no EXIF, GPS, ICC or comments."""
    image = image.convert("RGB")  # a new image: nothing of the upload's info dict comes along
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


class PhotoStore:
    """A folder of shared photos, bounded in bytes and in age; `clock` (aware UTC) is injectable for tests."""

    def __init__(self, folder: str | os.PathLike | None, max_bytes: int, retention: timedelta,
                 clock: Callable[[], datetime] = utcnow):
        self.folder = Path(folder) if folder else None
        self.max_bytes, self.retention, self.clock = max_bytes, retention, clock

    @property
    def enabled(self) -> bool:
        return self.folder is not None and self.max_bytes > 0

    def _files(self) -> list[os.DirEntry]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return [entry for entry in os.scandir(self.folder) if NAME.fullmatch(entry.name)]

    def used_bytes(self) -> int:
        return sum(entry.stat().st_size for entry in self._files())

    def path(self, name: str) -> Path:
        """The stored file `name`; only names the store gave out are accepted, so no path leads elsewhere."""
        if self.folder is None or not NAME.fullmatch(name or ""):
            raise FileNotFoundError(name)
        return self.folder / name

    def _full(self) -> StoreFull:
        if not self.enabled:
            return StoreFull("This server keeps no shared photos: send them again without sharing them.")
        return StoreFull(f"The store for shared photos is full ({self.max_bytes / MEGABYTE:g} MB): send the photos "
                         f"again without sharing them, or try again once the owner has reviewed some.")

    def check_room(self) -> None:
        """Refuse at once, before any work, a request to share photos when there is no room at all."""
        if not self.enabled or self.used_bytes() >= self.max_bytes:
            raise self._full()

    def put_all(self, images: list[Image.Image]) -> list[str]:
        """Store every image, or none (StoreFull) when together they would go past the quota; their new names."""
        if not self.enabled:
            raise self._full()
        encoded = [reencode(image) for image in images]
        self.folder.mkdir(parents=True, exist_ok=True)
        # One writer at a time across workers: the room checked is the room written into.
        with exclusive(self.folder / LOCK):
            if self.used_bytes() + sum(map(len, encoded)) > self.max_bytes:
                raise self._full()
            names = []
            for data in encoded:
                name = secrets.token_hex(16) + ".jpg"
                with atomic_path(self.folder / name) as tmp:
                    tmp.write_bytes(data)
                names.append(name)
        return names

    def delete(self, names) -> None:
        for name in names:
            if name:
                self.path(name).unlink(missing_ok=True)

    def purge_expired(self, session: Session) -> int:
        """Delete photos older than the retention, reviewed or not, and forget their names; how many went.

        Files no answer names (a worker killed between writing a photo and logging its answer) go by their age too.
        """
        cutoff = self.clock() - self.retention
        expired = list(session.scalars(select(Answer.photo).where(Answer.photo.is_not(None),
                                                                  Answer.created_at < cutoff)))
        if expired:
            session.execute(update(Answer).where(Answer.photo.in_(expired)).values(photo=None))
            session.commit()
            self.delete(expired)  # after the commit: a name in the database always has its file
        stale = [e.name for e in self._files() if e.stat().st_mtime < cutoff.timestamp() and e.name not in expired]
        if stale:
            named = set(session.scalars(select(Answer.photo).where(Answer.photo.in_(stale))))
            self.delete(name for name in stale if name not in named)
        return len(expired)


def photo_store() -> PhotoStore:
    """The current app's photo store."""
    return current_app.extensions[EXTENSION]


def init_app(app: Flask) -> None:
    """The store as configured: GUITARS_FEEDBACK_DIR, _MAX_MB (0: none kept), _RETENTION_DAYS."""
    config = app.config
    app.extensions[EXTENSION] = PhotoStore(config["FEEDBACK_DIR"], int(config["FEEDBACK_MAX_MB"] * MEGABYTE),
                                           timedelta(days=config["FEEDBACK_RETENTION_DAYS"]))
