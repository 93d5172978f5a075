"""Prometheus metrics of every role, in the client's default registry.

A plain module of metric objects: a role imports what it records, `/metrics`
renders the lot. Label values are bounded by construction (outcome names,
event types we know, exception class names, secret fingerprints); nothing a
sender controls becomes a label as it is.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Histogram, generate_latest

NAMESPACE = "fanfare_reservations"

# --- receiver -----------------------------------------------------------------

WEBHOOK_REQUESTS = Counter(
    "webhook_requests",
    "Fanfare webhook requests by outcome and event type (known types as they "
    "are, others folded into 'other'; 'none' before the type is known)",
    ["outcome", "event_type"],
    namespace=NAMESPACE,
)
WEBHOOK_DURATION = Histogram(
    "webhook_request_duration_seconds",
    "Time from request to answer, including the wait for Kafka's acknowledgement",
    ["outcome"],
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
WEBHOOK_PRODUCE_ERRORS = Counter(
    "webhook_produce_errors",
    "Webhook records Kafka did not acknowledge in time, by error class",
    ["error"],
    namespace=NAMESPACE,
)
PRODUCER_REPLACEMENTS = Counter(
    "producer_replacements",
    "Kafka producers replaced after aiokafka declared one dead (its sender "
    "task died, e.g. OutOfOrderSequenceNumber after a broker outage)",
    namespace=NAMESPACE,
)
WEBHOOK_VERIFIED = Counter(
    "webhook_verified",
    "Verified webhooks by the fingerprint of the secret that matched "
    "(a rotated-out secret at zero can be retired)",
    ["secret"],
    namespace=NAMESPACE,
)


def render() -> tuple[bytes, str]:
    """The exposition text of the default registry and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
