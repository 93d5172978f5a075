"""Prometheus metrics of every role, in the client's default registry.

A plain module of metric objects: a role imports what it records, `/metrics`
renders the lot. Label values are bounded by construction (outcome names,
event types we know, exception class names, secret fingerprints, and
experience ids only through ExperienceLabels); nothing a sender controls
becomes a label as it is.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

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
QUARANTINED = Counter(
    "quarantined",
    "Signed deliveries whose data failed translation, kept in the quarantine topic, by "
    "event type (folded as webhook_requests_total) and validation error type",
    ["event_type", "reason"],
    namespace=NAMESPACE,
)
WEBHOOK_VERIFIED = Counter(
    "webhook_verified",
    "Verified webhooks by the fingerprint of the secret that matched "
    "(a rotated-out secret at zero can be retired)",
    ["secret"],
    namespace=NAMESPACE,
)


# --- HTTP API -------------------------------------------------------------------

API_REQUESTS = Counter(
    "api_requests",
    "HTTP API requests by route template, method and status",
    ["route", "method", "status"],
    namespace=NAMESPACE,
)
API_REQUEST_SECONDS = Histogram(
    "api_request_duration_seconds",
    "Time from request to answer, including the wait for a write's outcome",
    ["route", "method"],
    namespace=NAMESPACE,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
API_PENDING_ANSWERS = Counter(
    "api_pending_answers",
    "Writes answered 202 because their outcome was not recorded within the wait",
    ["route"],
    namespace=NAMESPACE,
)


def render() -> tuple[bytes, str]:
    """The exposition text of the default registry and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# --- consumers -------------------------------------------------------------------

COMMANDS_APPLIED = Counter(
    "commands_applied",
    "Commands applied, by command type and outcome status",
    ["type", "outcome"],
    namespace=NAMESPACE,
)
BATCHES_APPLIED = Counter(
    "batches_applied", "Batches committed (one transaction each)", namespace=NAMESPACE
)
BATCH_SECONDS = Histogram(
    "batch_apply_seconds",
    "Time to apply and commit one batch",
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
COMMANDS_PARKED = Counter(
    "commands_parked",
    "Poison commands parked on the dead-letter topic, by error class",
    ["error"],
    namespace=NAMESPACE,
)
CONSUMER_LAG = Gauge(
    "consumer_lag",
    "Records on the partition not yet applied (high watermark minus position)",
    ["partition"],
    namespace=NAMESPACE,
)

# --- holds (the guide's outcome metrics) ------------------------------------------

# The `experience` label of the hold counters, when experiences are not told apart.
ALL_EXPERIENCES = "all"
# ... and for experiences past the cap.
OTHER_EXPERIENCES = "other"


class ExperienceLabels:
    """The `experience` label's value for an experience id, bounded: each
    experience is a series of its own in every hold counter, and a merchant
    with a drop a day would add hundreds a year. `limit` 0 (the default of
    METRICS_EXPERIENCE_LABELS): every experience is `all`. `limit` N: the
    first N experiences this process counts keep their id, later ones are
    `other`, so a process exports at most N + 1 values per counter."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._named: set[str] = set()

    def __call__(self, experience_id: str) -> str:
        if experience_id in self._named:
            return experience_id
        if len(self._named) < self.limit:
            self._named.add(experience_id)
            return experience_id
        return OTHER_EXPERIENCES if self.limit else ALL_EXPERIENCES


HOLDS_CREATED = Counter(
    "holds_created", "Holds taken, per experience", ["experience"], namespace=NAMESPACE
)
HOLDS_CONVERTED = Counter(
    "holds_converted", "Holds sold at checkout, per experience", ["experience"], namespace=NAMESPACE
)
HOLDS_RELEASED = Counter(
    "holds_released",
    "Holds given back (left, denied, lost, superseded, cart changed), per experience",
    ["experience"],
    namespace=NAMESPACE,
)
HOLDS_EXPIRED = Counter(
    "holds_expired",
    "Holds whose window ran out, per experience",
    ["experience"],
    namespace=NAMESPACE,
)
LATE_CONVERSION_UNFILLED = Counter(
    "late_conversion_unfilled",
    "Order lines of a late completion (its holds had ended) that found no free units: "
    "sold by the merchant, no longer on the shelf; per experience",
    ["experience"],
    namespace=NAMESPACE,
)
HOLD_DURATION = Histogram(
    "hold_duration_seconds",
    "From a hold being taken to its end, by how it ended",
    ["outcome"],
    namespace=NAMESPACE,
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600),
)
UNITS_BACKFILLED = Counter(
    "units_backfilled",
    "Units freed (a hold ended, stock set) and held for a refused line of an admission still "
    "active, per experience",
    ["experience"],
    namespace=NAMESPACE,
)
BACKFILL_SECONDS = Histogram(
    "backfill_seconds",
    "From the occurredAt of the command a backfill was decided after (the one that freed the "
    "units, or the experience's next command on the row for units a stock set freed) to the "
    "commit of its batch, per backfilled hold",
    namespace=NAMESPACE,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15, 60, 300),
)
HOLDS_ACTIVE = Gauge(
    "holds_active",
    "Active holds (read from the database by every scheduler process, leading or not)",
    namespace=NAMESPACE,
)

# --- relay, scheduler, reconcile ----------------------------------------------------

OUTBOX_PUBLISHED = Counter(
    "outbox_published", "Events published to the events topic", namespace=NAMESPACE
)
OUTBOX_BACKLOG = Gauge(
    "outbox_backlog", "Events committed but not yet published", namespace=NAMESPACE
)
EXPIRIES_PUBLISHED = Counter(
    "expiries_published", "Expiry commands published by the scheduler", namespace=NAMESPACE
)
RETENTION_ROWS_DELETED = Counter(
    "retention_rows_deleted",
    "Rows deleted by retention (the leading scheduler's housekeeping), per table",
    ["table"],
    namespace=NAMESPACE,
)
RECONCILE_DRIFT_ROWS = Gauge(
    "reconcile_drift_rows",
    "Stock rows whose counters differed from their reservations at the last reconcile",
    namespace=NAMESPACE,
)
