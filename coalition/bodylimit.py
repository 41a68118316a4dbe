"""A body of undeclared length (chunked) is held to MAX_BODY_BYTES too: 413 before any token work.

werkzeug refuses a declared Content-Length over the limit as soon as the body is read. A chunked
body declares none. A server that de-chunks it (gunicorn) sets `wsgi.input_terminated`, and
werkzeug then reads at most MAX_CONTENT_LENGTH bytes and stops there without a word: the token
check hashed a body cut short and answered 401 invalid-token, whatever the token. Here such a
body is read first, one byte past the limit at most, and refused 413 payload-too-large if it has
that byte; otherwise the request goes on as if the body had come with its Content-Length.

Without `wsgi.input_terminated` the server has not bounded the stream, and werkzeug reads none of
it (an empty body); reading it here could wait forever for a client that sends no more.
"""
from __future__ import annotations

import io

from flask import Flask, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

_READ = 64 * 1024


def init_app(app: Flask) -> None:
    app.before_request(read_undeclared_body)


def read_undeclared_body() -> None:
    environ = request.environ
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is None or request.content_length is not None or "wsgi.input_terminated" not in environ:
        return
    body = _read_at_most(environ["wsgi.input"], limit + 1)
    if len(body) > limit:
        raise RequestEntityTooLarge()
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_TRANSFER_ENCODING", None)  # de-chunked: its length is declared now


def _read_at_most(stream, size: int) -> bytes:
    chunks, total = [], 0
    while total < size:
        chunk = stream.read(min(_READ, size - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
