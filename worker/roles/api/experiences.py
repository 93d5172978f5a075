"""Experiences: how an experience holds stock, set and read."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from aiohttp import web
from pydantic import ConfigDict, Field, model_validator

from worker.adapters import queries
from worker.domain.commands import ConfigureExperience
from worker.domain.model import (
    POOL_SIZE_RULE,
    ExperienceSettings,
    Identifier,
    MultiItemPolicy,
    OnComplete,
    ProductPool,
    Strategy,
    check_pool_size,
)
from worker.domain.pools import PoolState, pool_states
from worker.openapi import Operation, Reply
from worker.roles.api.http import READ_ERRORS, api_state, model_answer, parse_body, parse_path
from worker.roles.api.models import ApiBody, ApiOut, ApiParams, ErrorBody
from worker.roles.api.writes import NOT_DURABLE_REPLY, PENDING_REPLY, envelope, write


class PoolEntry(ApiBody):
    """One product's pool size, as a request gives it."""

    product_id: Identifier
    variant_id: Identifier | None = None
    size: int = Field(ge=0, le=1_000_000_000)


class ExperienceConfig(ApiBody):
    """How an experience holds stock; applies to admissions after it."""

    model_config = ConfigDict(json_schema_extra=POOL_SIZE_RULE)

    strategy: Strategy = Field(
        default=Strategy.SOFT,
        description="soft: hold what the cart asks while stock lasts; hard: the whole cart "
        "or nothing; pool: one unit per admitted consumer and product, at most the "
        "product's pool size (its entry in pools, else poolSize) for the experience",
    )
    window_seconds: int | None = Field(
        default=None,
        ge=1,
        le=86_400,
        description="Admission window; omitted: the service default (RESERVATION_WINDOW_SECONDS)",
    )
    buffer_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="Margin after the window before holds expire; omitted: the service "
        "default (RESERVATION_BUFFER_SECONDS)",
    )
    pool_size: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000_000,
        description="Pool strategy: the pool size of every product not in pools; omitted, "
        "those products have no pool and hold nothing. The pool strategy needs poolSize, "
        "pools or both",
    )
    multi_item_policy: MultiItemPolicy = Field(
        default=MultiItemPolicy.PARTIAL,
        description="partial: hold each line that has stock; all_or_nothing: every line or none",
    )
    extension_seconds: int = Field(
        default=0, ge=0, le=86_400, description="How far one extend moves a hold; 0: no extending"
    )
    max_extensions: int = Field(
        default=0, ge=0, le=100, description="How many times an admission's holds may be extended"
    )
    retry_window_seconds: int = Field(
        default=0,
        ge=0,
        le=86_400,
        description="How long after its holds expired an admission may try again; 0: never",
    )
    on_complete: OnComplete = Field(
        default=OnComplete.CONVERT_ORDERED,
        description="convert_ordered: a completion converts the ordered quantities and "
        "releases the rest; convert_all: it converts every active hold of the admission",
    )
    pools: list[PoolEntry] = Field(
        default=[],
        description="Pool sizes per product (pool strategy), each product (and variant) at "
        "most once; poolSize for the rest",
    )
    backfill: bool = Field(
        default=False,
        description="true: units freed later (a hold released or expired, stock raised) are "
        "offered to the refused lines of admissions still active, in admittedAt order, and "
        "published as reservation.created with reason backfill",
    )

    @model_validator(mode="after")
    def _pool_needs_size(self) -> ExperienceConfig:
        check_pool_size(self.strategy, self.pool_size, self.pools)
        keys = [(p.product_id, p.variant_id or "") for p in self.pools]
        if len(keys) != len(set(keys)):
            raise ValueError("pools lists a product (and variant) more than once")
        return self


class ExperiencePath(ApiParams):
    experience_id: Identifier


class SettingsOut(ApiOut):
    """Every setting of an experience, as answered."""

    strategy: Strategy
    window_seconds: int
    buffer_seconds: int
    pool_size: int | None
    multi_item_policy: MultiItemPolicy
    extension_seconds: int
    max_extensions: int
    retry_window_seconds: int
    on_complete: OnComplete
    pools: tuple[ProductPool, ...]
    backfill: bool


class ExperienceConfiguredOutcome(SettingsOut):
    command_id: UUID
    status: Literal["configured"]


class PoolView(ApiOut):
    product_id: str
    variant_id: str | None
    size: int
    used: int = Field(description="Units held or sold under this pool; a sale may pass the size")
    left: int = Field(description="size - used, never below 0")


class ExperienceView(SettingsOut):
    experience_id: str
    configured: bool = Field(description="false: no configuration yet, the defaults apply")
    pool_usage: list[PoolView] = Field(
        description="Each pool's size, units handed out (held or sold) and units left: every "
        "product in pools, and every product that used the default poolSize"
    )


async def put_experience(request: web.Request) -> web.Response:
    path = parse_path(request, ExperiencePath)
    body = await parse_body(request, ExperienceConfig)
    settings = api_state(request).settings
    common, idempotent = envelope(request)
    command = ConfigureExperience(
        **common,
        **body.model_dump(exclude={"window_seconds", "buffer_seconds"}),
        experience_id=path.experience_id,
        window_seconds=body.window_seconds or settings.reservation_window_seconds,
        buffer_seconds=(
            body.buffer_seconds
            if body.buffer_seconds is not None
            else settings.reservation_buffer_seconds
        ),
    )
    return await write(request, command, idempotent)


async def get_experience(request: web.Request) -> web.Response:
    path = parse_path(request, ExperiencePath)
    state = api_state(request)
    configured = await queries.experience_settings(state.pool, path.experience_id)
    effective = configured
    if effective is None:
        effective = ExperienceSettings(
            window_seconds=state.settings.reservation_window_seconds,
            buffer_seconds=state.settings.reservation_buffer_seconds,
        )
    used = await queries.pool_usage(state.pool, path.experience_id)
    return model_answer(
        ExperienceView(
            experience_id=path.experience_id,
            configured=configured is not None,
            **dict(effective),
            pool_usage=[_pool_view(p) for p in pool_states(effective, used)],
        )
    )


def _pool_view(pool: PoolState) -> PoolView:
    return PoolView(
        product_id=pool.product_id,
        variant_id=pool.variant_id or None,
        size=pool.size,
        used=pool.used,
        left=pool.left,
    )


ROUTES = (
    Operation(
        "PUT",
        "/v1/experiences/{experienceId}",
        "configureExperience",
        "Set an experience's strategy, window and multi-item policy",
        put_experience,
        "experiences",
        description="Applies to admissions after it; holds already taken keep the settings "
        "they were taken under. A pool may not shrink below the units it has handed out "
        "(held or sold): the operator releases or sells first.",
        body=ExperienceConfig,
        path_model=ExperiencePath,
        replies=(
            Reply(200, "Applied", ExperienceConfiguredOutcome),
            PENDING_REPLY,
            Reply(
                409,
                "A pool size below the units that pool has handed out (POOL_BELOW_USED); "
                "nothing changed",
                ErrorBody,
                refusal=True,
            ),
            # A product listed twice in `pools` fits the schema (uniqueItems
            # cannot compare only the product of each item): a refusal.
            Reply(
                400,
                "Invalid body, parameter or Idempotency-Key (INVALID_*), or a product "
                "listed twice in pools (INVALID_BODY)",
                ErrorBody,
                refusal=True,
            ),
            NOT_DURABLE_REPLY,
        ),
        idempotency_key=True,
    ),
    Operation(
        "GET",
        "/v1/experiences/{experienceId}",
        "getExperience",
        "The settings an admission to this experience would be held under, and its pools",
        get_experience,
        "experiences",
        path_model=ExperiencePath,
        replies=(Reply(200, "Configured or default settings", ExperienceView), *READ_ERRORS),
    ),
)
