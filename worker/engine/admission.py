"""Applying an admission: the holds for the consumer's cart, at most once per
grant. Whether it is open is worker.domain.endings' verdict (an earlier
admission it supersedes, or an ending or completion that arrived first);
what it holds is worker.domain.admission.plan_holds."""

from __future__ import annotations

from datetime import datetime

from worker.adapters.unit_of_work import UnitOfWork
from worker.domain.admission import plan_holds
from worker.domain.commands import AdmitConsumer
from worker.domain.endings import AdmissionStatus, Verdict
from worker.domain.model import ExperienceSettings
from worker.engine.base import Applied
from worker.engine.events import Events
from worker.engine.holds import HoldTerms
from worker.engine.sale import sell
from worker.engine.settle import Settled, close, settle
from worker.engine.taking import hold_requests


def admit(uow: UnitOfWork, cmd: AdmitConsumer, defaults: ExperienceSettings) -> Applied:
    events = Events(cmd)
    if uow.grant_seen(cmd.grant_digest):
        # The grant dedupes forever: no second set of holds, whatever the event id.
        return Applied({"status": "duplicate_grant"})
    settings = uow.load_settings(cmd.experience_id) or defaults
    terms = HoldTerms(
        cmd.experience_id,
        cmd.consumer_id,
        cmd.grant_digest,
        cmd.admitted_at,
        settings.expires_at(cmd.admitted_at),
        settings,
    )
    _insert(uow, cmd, terms)
    # Earlier admissions of the consumer end or change hands first.
    settled = settle(
        uow, events, cmd.experience_id, cmd.consumer_id, defaults, skip=cmd.grant_digest
    )
    verdict = settled.verdicts[cmd.grant_digest]
    recorded = _recorded(verdict)
    if recorded is not AdmissionStatus.ACTIVE:
        # Superseded already, or its ending came first: recorded ended, no holds.
        uow.close_admission(cmd.grant_digest, recorded.value, verdict.reason or "", _at(verdict))
    events.admission_recorded(
        cmd, recorded, verdict, settings, terms.expires_at, _supersedes(settled)
    )
    if recorded is not AdmissionStatus.ACTIVE:
        outcome = {"status": recorded.value, "held": 0, "expiresAt": terms.expires_at.isoformat()}
        return Applied(outcome, events.items)
    if verdict.status is AdmissionStatus.CONVERTED:
        return _sold(uow, events, cmd, verdict, defaults)
    return _hold(uow, events, terms)


def _insert(uow: UnitOfWork, cmd: AdmitConsumer, terms: HoldTerms) -> None:
    uow.insert_admission(
        grant_digest=cmd.grant_digest,
        experience_id=cmd.experience_id,
        consumer_id=cmd.consumer_id,
        admitted_at=cmd.admitted_at,
        expires_at=terms.expires_at,
        status=AdmissionStatus.ACTIVE.value,
        settings=terms.settings,
        command_id=cmd.command_id,
    )


def _recorded(verdict: Verdict) -> AdmissionStatus:
    """How the admission is recorded: a sale that arrived first is made
    after it is recorded, so it is recorded open."""
    if verdict.status is AdmissionStatus.CONVERTED:
        return AdmissionStatus.ACTIVE
    return verdict.status


def _supersedes(settled: Settled) -> str | None:
    """The earlier admission this one ended, if it ended one."""
    return next((g for g, before in settled.changed.items() if not before.over), None)


def _at(verdict: Verdict) -> datetime:
    assert verdict.at is not None
    return verdict.at


def _sold(
    uow: UnitOfWork,
    events: Events,
    cmd: AdmitConsumer,
    verdict: Verdict,
    defaults: ExperienceSettings,
) -> Applied:
    """Its completion arrived first: the cart of then is sold at once."""
    pair = (cmd.experience_id, cmd.consumer_id)
    sold = sell(uow, events, pair, cmd.grant_digest, verdict, defaults)
    close(uow, events, pair, cmd.grant_digest, verdict)
    outcome = {"status": AdmissionStatus.CONVERTED.value, "orderId": verdict.order_id}
    return Applied({**outcome, "held": sold.holds}, events.items)


def _hold(uow: UnitOfWork, events: Events, terms: HoldTerms) -> Applied:
    """Try the holds of the consumer's cart."""
    cart = uow.load_cart(terms.experience_id, terms.consumer_id)
    requests = plan_holds(terms.grant_digest, cart, terms.settings)
    return Applied(hold_requests(uow, events, terms, requests), events.items)
