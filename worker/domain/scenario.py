"""A scenario: experience settings to try on a recorded drop instead of the
recorded ones, given as `name=value` overrides (`strategy=pool,pool_size=500`).

Each override names a field of ExperienceSettings and replaces it, by
`model_copy(update=...)`, in every settings the drop's experience had: its
recorded configurations and, where the log has none before its first
command, the consumer's defaults. The result is checked as a configuration
is (ranges, a pool strategy needs a size)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from worker.domain import ids
from worker.domain.commands import CommandSource, ConfigureExperience
from worker.domain.model import ExperienceSettings, MultiItemPolicy, Strategy, check_pool_size

S = TypeVar("S", bound=ExperienceSettings)


class ScenarioError(ValueError):
    """Overrides that cannot be applied; the message says which and why."""


def _switch(text: str) -> bool:
    if text not in ("on", "off"):
        raise ValueError(f"expected on or off, got {text!r}")
    return text == "on"


# Override name -> (the ExperienceSettings field it sets, how its value reads).
OVERRIDES: dict[str, tuple[str, Callable[[str], Any]]] = {
    "strategy": ("strategy", Strategy),
    "window": ("window_seconds", int),
    "buffer": ("buffer_seconds", int),
    "pool_size": ("pool_size", int),
    "backfill": ("backfill", _switch),
    "multi_item": ("multi_item_policy", MultiItemPolicy),
}


@dataclass(frozen=True)
class Scenario:
    """Overrides by ExperienceSettings field name; none: the recorded settings."""

    label: str
    update: dict[str, Any] = field(default_factory=dict)

    def apply(self, settings: S) -> S:
        """The settings with the overrides, checked."""
        if not self.update:
            return settings
        changed = settings.model_copy(update=self.update)
        try:
            checked = type(settings).model_validate(changed.model_dump())
            check_pool_size(checked.strategy, checked.pool_size, checked.pools)
        except (ValidationError, ValueError) as exc:
            raise ScenarioError(f"{self.label}: {_reason(exc)}") from None
        return checked


RECORDED = Scenario("as recorded")


def override(name: str, text: str) -> tuple[str, Any]:
    """One override, read: the field it sets and its value."""
    key = name.strip().replace("-", "_")
    if key not in OVERRIDES:
        raise ScenarioError(f"unknown override {name!r}; known: {', '.join(OVERRIDES)}")
    target, read = OVERRIDES[key]
    try:
        value = read(text.strip())
        # The field's own range, checked now rather than at the first configuration.
        ExperienceSettings.model_validate({target: value})
    except ValidationError as exc:
        raise ScenarioError(f"{key}={text.strip()}: {_reason(exc)}") from None
    except ValueError as exc:
        raise ScenarioError(f"{key}={text.strip()}: {exc}") from None
    return target, value


def scenario(pairs: list[tuple[str, str]]) -> Scenario:
    """A scenario from (name, value) pairs; a name given twice is refused."""
    update: dict[str, Any] = {}
    for name, text in pairs:
        target, value = override(name, text)
        if target in update:
            raise ScenarioError(f"{name} given twice in one scenario")
        update[target] = value
    return Scenario(_label(pairs), update) if update else RECORDED


def parse(spec: str) -> Scenario:
    """`name=value,name=value`, or `recorded` for the recorded settings."""
    if spec.strip() in ("", "recorded"):
        return RECORDED
    pairs = []
    for part in spec.split(","):
        name, sep, text = part.partition("=")
        if not sep:
            raise ScenarioError(f"expected name=value, got {part!r}")
        pairs.append((name, text))
    return scenario(pairs)


def configuration(
    experience_id: str, settings: ExperienceSettings, at: datetime, label: str
) -> ConfigureExperience:
    """The settings an experience had without a recorded configuration (the
    consumer's defaults), as the configuration a simulation applies first."""
    source_id = f"simulate:{experience_id}:{label}"
    return ConfigureExperience(
        command_id=ids.command_id("simulate", source_id),
        occurred_at=at,
        received_at=at,
        source=CommandSource(kind="api", source_id=source_id),
        experience_id=experience_id,
        **settings.model_dump(),
    )


def _label(pairs: list[tuple[str, str]]) -> str:
    return ",".join(f"{n.strip().replace('-', '_')}={t.strip()}" for n, t in pairs)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return str(exc)
