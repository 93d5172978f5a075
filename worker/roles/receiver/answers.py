"""What the receiver answers a webhook, and the log line each answer leaves.

An answer carries what its metrics and its log line need beside the HTTP
status, body and headers. A request answered before it is acted on raises
`Refusal` with its answer, so every check can stop the request where it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from worker.logs import get_logger
from worker.roles.ops import error

log = get_logger("worker.receiver")


@dataclass
class Answer:
    """One answer to a webhook, with what the metrics and the log line need."""

    status: int
    body: dict[str, Any]
    outcome: str
    event_type: str = "none"
    headers: dict[str, str] = field(default_factory=dict)
    log_fields: dict[str, Any] = field(default_factory=dict)
    close: bool = False

    def response(self) -> web.Response:
        response = web.Response(
            body=orjson.dumps(self.body),
            status=self.status,
            headers=self.headers,
            content_type="application/json",
            charset="utf-8",
        )
        if self.close:
            response.force_close()  # Connection: close, and no drain (runtime)
        return response


class Refusal(Exception):
    """The request is answered without being acted on."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.outcome)
        self.answer = answer


def refused(status: int, code: str, message: str, outcome: str, **log_fields: Any) -> Answer:
    body: dict[str, Any] = {"error": code, "message": message}
    if "field" in log_fields:
        body["field"] = log_fields["field"]
    return Answer(status, body, outcome, log_fields={"error": code, **log_fields})


def refused_unread(status: int, code: str, message: str, outcome: str) -> Answer:
    """A refusal whose body is not (or no longer) read: the connection ends
    with the answer (`Connection: close`; the server does not drain the
    rest, see runtime._serve_http), so a slow or oversized sender holds no
    socket and the body is never decoded."""
    answer = refused(status, code, message, outcome)
    answer.close = True
    return answer


def unexpected(request: web.Request) -> web.Response:
    # A bug, never an input we failed to anticipate: the fuzz suite holds
    # every input to a 4xx. Logged without the request body.
    log.exception("http_unhandled_error", path=request.path, method=request.method)
    return error(500, "INTERNAL_ERROR", "unexpected error")


def log_answer(answer: Answer, delivery_id: str | None, elapsed: float) -> None:
    # A line per accepted webhook was a sixth of the receiver's CPU at load;
    # the counters carry the rates, and LOG_LEVEL=debug follows each event
    # (ids, never the grant) when needed. Building its fields is skipped too.
    if answer.outcome == "accepted" and not log.is_enabled_for(logging.DEBUG):
        return
    fields = {
        "status": answer.status,
        "outcome": answer.outcome,
        "delivery_id": delivery_id,
        "ms": round(elapsed * 1000, 2),
        **answer.log_fields,
    }
    if answer.status >= 500:
        log.error("webhook_not_durable", **fields)
    elif answer.status >= 400:
        log.warning("webhook_rejected", **fields)
    elif answer.outcome == "accepted":
        log.debug("webhook_accepted", **fields)
    else:
        # Ignored, not acted on or forwarded: rare, and the operator's only
        # trace of an event type Fanfare added (DESIGN: logged and counted).
        log.info("webhook_" + answer.outcome, **fields)
