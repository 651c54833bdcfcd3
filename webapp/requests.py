"""The request class: uploads stay in memory (bounded by MAX_CONTENT_LENGTH), never spooled to disk."""
from __future__ import annotations

import io

from flask import Request


class InMemoryRequest(Request):
    """werkzeug spools form files over 500 KB to a temporary file; ours are decoded in memory and forgotten."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()
