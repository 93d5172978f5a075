"""Structured logs: one JSON object per line on stderr.

The service's own lines come from structlog. aiohttp, aiokafka, asyncpg and
asyncio (the loop's "Task exception was never retrieved" and the like) log
through the standard library; their records are rendered by the same
processors through structlog's `ProcessorFormatter`, so an operator's
pipeline reads JSON lines only, a traceback included (one escaped string
field, `exception`). Warnings and exceptions that would otherwise be printed
by the interpreter itself (an uncaught one, one raised in `__del__`) are
logged the same way.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import TracebackType
from typing import Any

import structlog
from aiohttp.http_exceptions import HttpProcessingError

# The standard library's loggers are chatty at info (aiokafka logs every
# rebalance step and connection); what they say at warning and above is
# what an operator needs next to our own lines.
FOREIGN_LEVEL = logging.WARNING


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    threshold = logging.getLevelNamesMapping()[level.upper()]
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    finish: list[structlog.typing.Processor]
    if fmt == "json":
        # The traceback becomes one string field, escaped by the renderer:
        # never raw lines a JSON-lines reader would choke on.
        finish = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        # Plain tracebacks: the rich default prints each frame's locals,
        # which may hold a request's body (grants) or a bearer key.
        finish = [
            structlog.dev.ConsoleRenderer(
                colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback
            )
        ]
    structlog.configure(
        processors=[*shared, *finish],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        # One write per line, so a line of ours and one from the standard
        # library's handler never interleave.
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_standard_logging(shared, finish, max(threshold, FOREIGN_LEVEL))
    logging.getLogger("aiohttp.server").addFilter(_NoRequestBytes())


class _StructlogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installs, so configuring twice replaces
    it instead of printing every record twice."""


def _route_standard_logging(
    shared: list[structlog.typing.Processor],
    finish: list[structlog.typing.Processor],
    level: int,
) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        # Foreign records get what our own lines carry, plus the logger's
        # name: which library spoke.
        foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finish],
    )
    handler = _StructlogHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StructlogHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _uncaught
    sys.unraisablehook = _unraisable
    threading.excepthook = _thread_uncaught


def _uncaught(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    get_logger("worker.interpreter").critical("uncaught_exception", exc_info=(kind, value, tb))


def _unraisable(unraisable: Any) -> None:
    # An exception in __del__ or a finalizer, which Python would print bare.
    exc = unraisable.exc_value
    get_logger("worker.interpreter").error(
        "unraisable_exception",
        detail=unraisable.err_msg or "Exception ignored in",
        where=repr(unraisable.object)[:200],
        exc_info=(type(exc), exc, unraisable.exc_traceback) if exc is not None else False,
    )


def _thread_uncaught(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return  # silent in the threading module's own hook too
    exc = args.exc_value
    get_logger("worker.interpreter").error(
        "uncaught_thread_exception",
        thread=args.thread.name if args.thread is not None else None,
        exc_info=(args.exc_type, exc, args.exc_traceback) if exc is not None else False,
    )


class _NoRequestBytes(logging.Filter):
    """aiohttp logs a request it cannot parse with the offending bytes (for a
    bare-LF request: every header and the body, bearer keys and admission
    grants included). Keep the event, drop the bytes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = "http_unparseable_request error=%s status=%s"
            record.args = (type(error).__name__, getattr(error, "code", ""))
            record.exc_info = None
            record.exc_text = None
        return True


def get_logger(name: str) -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(name)
    return logger
