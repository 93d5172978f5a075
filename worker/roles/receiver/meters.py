"""The receiver's metric children (the metrics themselves are in
worker.metrics), each looked up once: labels() checks and locks on every
call, and the label sets are few (outcomes, known event types, secrets)."""

from __future__ import annotations

from typing import Any

from worker import metrics


class Meters:
    def __init__(self) -> None:
        self._requests: dict[tuple[str, str], Any] = {}
        self._durations: dict[str, Any] = {}
        self._verified: dict[str, Any] = {}

    def record(self, outcome: str, event_type: str, seconds: float) -> None:
        counter = self._requests.get((outcome, event_type))
        if counter is None:
            counter = metrics.WEBHOOK_REQUESTS.labels(outcome, event_type)
            self._requests[(outcome, event_type)] = counter
        counter.inc()
        histogram = self._durations.get(outcome)
        if histogram is None:
            histogram = self._durations[outcome] = metrics.WEBHOOK_DURATION.labels(outcome)
        histogram.observe(seconds)

    def method_not_allowed(self) -> None:
        # Counted without a duration: the request is answered before timing.
        metrics.WEBHOOK_REQUESTS.labels("method_not_allowed", "none").inc()

    def verified(self, fingerprint: str) -> None:
        counter = self._verified.get(fingerprint)
        if counter is None:
            counter = self._verified[fingerprint] = metrics.WEBHOOK_VERIFIED.labels(fingerprint)
        counter.inc()

    def quarantined(self, event_type: str, reason: str) -> None:
        metrics.QUARANTINED.labels(event_type, reason).inc()

    def produce_error(self, error: str) -> None:
        metrics.WEBHOOK_PRODUCE_ERRORS.labels(error).inc()
