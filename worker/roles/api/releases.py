"""Operators release holds: the ones named by id, a consumer's, or a
product's in an experience. Each experience has one writer, so a release
naming holds of several experiences is one command per experience (the
holds' experiences read first), and the answer adds their outcomes up."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from aiohttp import web
from pydantic import ConfigDict, Field, model_validator

from worker.adapters import queries
from worker.config import OPERATOR_SCOPE
from worker.domain import ids
from worker.domain.base import one_of_forms
from worker.domain.commands import RELEASE_MAX_IDS, CommandBase, OperatorReason, ReleaseHolds
from worker.domain.model import Identifier
from worker.logs import get_logger
from worker.openapi import Operation, Reply
from worker.roles.api.http import KEY_FINGERPRINT, api_state, model_answer, parse_body
from worker.roles.api.models import ApiBody, ApiOut, ErrorBody, Pending
from worker.roles.api.writes import INVALID_REPLY, PENDING_REPLY, envelope, write_each

log = get_logger("worker.api")


# _one_form in JSON Schema: exactly one of the three forms.
RELEASE_FORMS = one_of_forms(
    (("reservationIds",), ("experienceId", "consumerId", "productId", "variantId")),
    (("experienceId", "consumerId"), ("reservationIds", "productId", "variantId")),
    (("experienceId", "productId"), ("reservationIds", "consumerId")),
)


class ReleaseRequest(ApiBody):
    """One of three forms: `reservationIds`; `experienceId` and
    `consumerId`; or `experienceId`, `productId` and maybe `variantId`."""

    model_config = ConfigDict(json_schema_extra=RELEASE_FORMS)

    reservation_ids: list[UUID] | None = Field(
        default=None, min_length=1, max_length=RELEASE_MAX_IDS
    )
    experience_id: Identifier | None = None
    consumer_id: Identifier | None = None
    product_id: Identifier | None = None
    variant_id: Identifier | None = Field(
        default=None, description="With productId; omit for every variant of the product"
    )
    reason: OperatorReason = Field(description="Why, for the operator's log and the events")

    @model_validator(mode="after")
    def _one_form(self) -> ReleaseRequest:
        by_ids = self.reservation_ids is not None
        scoped = (self.consumer_id is not None) + (self.product_id is not None)
        if by_ids and (self.experience_id is not None or scoped or self.variant_id is not None):
            raise ValueError("reservationIds goes alone (with reason)")
        if not by_ids and (self.experience_id is None or scoped != 1):
            raise ValueError("give reservationIds, or experienceId with consumerId or productId")
        if self.variant_id is not None and self.product_id is None:
            raise ValueError("variantId goes with productId")
        return self


class ReleaseOutcome(ApiOut):
    status: Literal["released"] = "released"
    command_ids: list[UUID] = Field(description="One command per experience the holds are in")
    released: list[UUID] = Field(description="Holds this release ended")
    not_active: list[UUID] = Field(
        description="Holds named that were no longer held (ended, or past their expiry)"
    )
    unknown: list[UUID] = Field(description="Ids named that are no hold")


class ReleasePending(Pending):
    command_ids: list[UUID] = Field(description="Every command of the release")


async def _targets(request: web.Request, body: ReleaseRequest) -> tuple[dict[str, Any], list[UUID]]:
    """Per experience, what its command selects; and the ids that are no hold."""
    if body.reservation_ids is None:
        assert body.experience_id is not None
        selection = {"consumer_id": body.consumer_id}
        if body.product_id is not None:
            selection = {"product_id": body.product_id, "variant_id": body.variant_id}
        return {body.experience_id: selection}, []
    named = list(dict.fromkeys(body.reservation_ids))
    found = await queries.hold_experiences(api_state(request).pool, named)
    per_experience: dict[str, Any] = {}
    for rid in named:
        if rid in found:
            per_experience.setdefault(found[rid], {"reservation_ids": []})
            per_experience[found[rid]]["reservation_ids"].append(rid)
    return per_experience, [rid for rid in named if rid not in found]


def _per_experience(common: dict[str, Any], experience_id: str) -> dict[str, Any]:
    """The envelope of the request's command for one experience: its source
    id is the request's command id (a UUID, so the pair reads one way only)
    and the experience, and its command id follows from that as always."""
    source_id = f"{common['command_id']}/{experience_id}"
    return {
        **common,
        "command_id": ids.command_id("api", source_id),
        "source": common["source"].model_copy(update={"source_id": source_id}),
        "experience_id": experience_id,
    }


async def release_holds(request: web.Request) -> web.Response:
    body = await parse_body(request, ReleaseRequest)
    common, idempotent = envelope(request)
    per_experience, unknown = await _targets(request, body)
    commands: list[CommandBase] = [
        ReleaseHolds(**_per_experience(common, experience_id), reason=body.reason, **selection)
        for experience_id, selection in sorted(per_experience.items())
    ]
    log.info(
        "holds_release_requested",
        key=request.get(KEY_FINGERPRINT),
        reason=body.reason,
        experiences=sorted(per_experience),
        command_ids=[str(c.command_id) for c in commands],
    )
    outcomes = await write_each(request, commands, idempotent) if commands else []
    command_ids = [c.command_id for c in commands]
    waiting = [c for c, outcome in zip(command_ids, outcomes, strict=True) if outcome is None]
    if waiting:
        response = model_answer(
            ReleasePending(command_id=waiting[0], command_ids=command_ids), status=202
        )
        response.headers["Location"] = f"/v1/commands/{waiting[0]}"
        return response
    done = [o for o in outcomes if o is not None]
    return model_answer(
        ReleaseOutcome(
            command_ids=command_ids,
            released=[UUID(r) for o in done for r in o["released"]],
            not_active=[UUID(r) for o in done for r in o["notActive"]],
            unknown=[*unknown, *(UUID(r) for o in done for r in o["unknown"])],
        )
    )


ROUTES = (
    Operation(
        "POST",
        "/v1/holds/release",
        "releaseHolds",
        "Release holds (operators)",
        release_holds,
        "operators",
        description="Ends each matching hold still held at the request's receive time "
        "`released`, reason `operator`; its units go back to stock (and pool). The "
        "admissions stay: a later checkout finds those lines missing. The events carry the "
        "key's fingerprint (requestedBy) and the reason. One command per experience the "
        "holds are in; 202 names the first not yet applied (retry with the same "
        "Idempotency-Key for the whole outcome). Needs a key with the operator scope.",
        body=ReleaseRequest,
        replies=(
            Reply(200, "Applied: what was released, not active, unknown", ReleaseOutcome),
            Reply(
                202,
                PENDING_REPLY.description,
                ReleasePending,
                headers=PENDING_REPLY.headers,
            ),
            INVALID_REPLY,
            Reply(
                503,
                "Kafka did not acknowledge a command in time (BROKER_UNAVAILABLE), or "
                "PostgreSQL could not be read for the named holds' experiences "
                "(DATABASE_UNAVAILABLE); retry with the same Idempotency-Key",
                ErrorBody,
                headers=("Retry-After",),
            ),
        ),
        scope=OPERATOR_SCOPE,
        idempotency_key=True,
    ),
)
