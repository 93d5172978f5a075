"""The webhook's body, read within its limits: declared size, media type and
encoding are checked before a byte is read; size and time while reading.

Every refusal here ends the connection with the answer, so a slow or
oversized sender holds no socket and the body is never decoded.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from worker.config import Settings
from worker.roles.receiver.answers import Answer, Refusal, refused, refused_unread

READ_CHUNK = 64 * 1024
# Content-Type values that need no parsing to be accepted (what Fanfare sends).
PLAIN_JSON = frozenset({"application/json", "application/json; charset=utf-8"})


class _TooLarge(Exception):
    pass


async def read_body(request: web.Request, settings: Settings) -> bytes:
    """The raw body as sent; raises Refusal when it may not or cannot be read."""
    limit = settings.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise Refusal(_too_large(limit))
    if request.headers.get("Content-Type") not in PLAIN_JSON and (
        rejected := _media_type_rejected(request)
    ):
        raise Refusal(rejected)
    # The signature covers the bytes as sent; a decoded body would be a
    # different text than the one Fanfare signed. Fanfare does not compress.
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        # aiohttp already decodes the body as it arrives; one that is not
        # what its header says must not be drained (nor logged) after this.
        raise Refusal(
            refused_unread(
                415, "UNSUPPORTED_MEDIA_TYPE", "Content-Encoding is not supported",
                "unsupported_media_type",
            )
        )  # fmt: skip
    try:
        return await _body(request, limit, settings.http_body_timeout_seconds)
    except TimeoutError:
        raise Refusal(
            refused_unread(408, "REQUEST_TIMEOUT", "body not received in time", "body_timeout")
        ) from None
    except _TooLarge:
        raise Refusal(_too_large(limit)) from None
    except (web.RequestPayloadError, ConnectionResetError):
        # The sender hung up before its declared length (aiohttp: the
        # connection lost) or framed the body wrongly: bad input, not a
        # fault of ours, so no traceback; the answer may reach no one.
        raise Refusal(
            refused_unread(
                400, "MALFORMED_BODY", "body cut short or badly framed", "body_incomplete"
            )
        ) from None


def _too_large(limit: int) -> Answer:
    return refused_unread(413, "PAYLOAD_TOO_LARGE", f"body larger than {limit} bytes", "too_large")


def _media_type_rejected(request: web.Request) -> Answer | None:
    try:
        media_type, charset = request.content_type, request.charset
    except (ValueError, IndexError):
        # The standard library's header parser fails on some malformed
        # parameters (`application/json;b*`: IndexError) instead of saying so.
        return refused(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "Content-Type could not be parsed",
            "unsupported_media_type",
        )
    if media_type != "application/json":
        return refused(
            415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json",
            "unsupported_media_type",
        )  # fmt: skip
    if (charset or "utf-8").lower() not in ("utf-8", "utf8"):
        return refused(
            415, "UNSUPPORTED_MEDIA_TYPE", "JSON bodies must be UTF-8", "unsupported_media_type"
        )
    return None


async def _body(request: web.Request, limit: int, timeout_seconds: float) -> bytes:
    content = request.content
    if not content.is_eof():
        async with asyncio.timeout(timeout_seconds):
            return await _read(request, limit)
    # The body came whole with the headers (the usual case for a webhook):
    # nothing to wait for, so no deadline to arm and no chunk loop.
    body = content.read_nowait()
    if len(body) > limit:
        raise _TooLarge
    return body


async def _read(request: web.Request, limit: int) -> bytes:
    # Read in chunks and stop at the limit: a chunked body declares no
    # length, and buffering it whole would let one request exhaust memory.
    body = bytearray()
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        body += chunk
        if len(body) > limit:
            raise _TooLarge
    return bytes(body)
