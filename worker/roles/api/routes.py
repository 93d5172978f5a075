"""The API's route table, one resource module after another, and the OpenAPI
document built from it: what the app registers is what the document
describes, models and replies included, so the two cannot drift.
`schemas/openapi-api.json` is the stored copy (`python -m worker.roles.api`
rewrites it; `--check` only compares)."""

from __future__ import annotations

from collections.abc import Sequence

from worker import openapi
from worker.roles.api import (
    carts,
    checkout,
    commands,
    experiences,
    holds,
    operations,
    releases,
    stock,
)
from worker.roles.api.models import ErrorBody

API_VERSION = "1.0.0"
OPENAPI_FILE = "openapi-api.json"
PROG = "python -m worker.roles.api"

ROUTES: tuple[openapi.Operation, ...] = (
    *experiences.ROUTES,
    *stock.ROUTES,
    *carts.ROUTES,
    *checkout.ROUTES,
    *holds.ROUTES,
    *releases.ROUTES,
    *commands.ROUTES,
    *operations.ROUTES,
)

DESCRIPTION = """\
What the storefront, checkout and operators need from the cart-reservation \
service: configure experiences, set stock, put carts, read holds with their \
countdown, validate and complete checkout.

Every route except the operations ones needs `Authorization: Bearer <key>` \
with one of the keys in RESERVATION_API_KEYS (401 UNAUTHORIZED otherwise). \
The operator routes (tag `operators`) need a key with the operator scope \
(`key:operator` in RESERVATION_API_KEYS; 403 FORBIDDEN_SCOPE otherwise).

Writes go through the command log: the answer is the applied outcome, or 202 \
with a commandId when it was not applied within API_WAIT_SECONDS (GET \
/v1/commands/{commandId} gives it later). Send an Idempotency-Key to make a \
write safe to retry. Errors are `{"error": "CODE", "message": "..."}`."""


def openapi_document() -> openapi.JsonObject:
    return openapi.build_document(
        ROUTES,
        title="Fanfare cart-reservation API",
        version=API_VERSION,
        description=DESCRIPTION,
        error_model=ErrorBody,
    )


def render_document() -> str:
    return openapi.render_json(openapi_document())


def main(argv: Sequence[str] | None = None) -> int:
    return openapi.write_or_check(argv, prog=PROG, file_name=OPENAPI_FILE, render=render_document)
