"""Issue 19, simulate: the pure parts. The expiry timeline a simulation
keeps of its own admissions, where a batch must be split for an expiry,
the outcome measured from a drop's events (the engine's own, run in
memory), the scenarios and the command line that names them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests import builders as b
from tests.fold_support import run_engine
from tests.traffic import T0
from worker.config import Settings, load_settings
from worker.domain import ids
from worker.domain.commands import CommandBase
from worker.domain.events import AdmissionEnded, EventBase
from worker.domain.expiry import ExpiryTimeline, expiry_command, expiry_id, overrun
from worker.domain.model import ExperienceSettings, MultiItemPolicy, Strategy
from worker.domain.outcome import OutcomeTally, Range
from worker.domain.scenario import RECORDED, ScenarioError, configuration, parse
from worker.tools import cli, simulate
from worker.tools.simulate import plan, scenarios

EXP = "drop"


def s(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def setup(**settings: Any) -> list[CommandBase]:
    """An experience with a 10 s window and no buffer, and 2 units of p."""
    at = s(-60)
    stamp = {"occurred_at": at, "received_at": at}
    configure = b.configure(EXP, window_seconds=10, buffer_seconds=0, **settings)
    return [configure.model_copy(update=stamp), b.stock("p", 2).model_copy(update=stamp)]


def shopper(name: str, at: datetime) -> list[CommandBase]:
    return [b.cart(EXP, name, b.line("p", 1), at=at), b.admit(EXP, name, name, at)]


def events_of(*commands: CommandBase) -> list[EventBase]:
    return run_engine(commands)[1]


# --- the expiry timeline ---------------------------------------------------------------


def test_the_timeline_expires_each_active_admission_at_its_expires_at() -> None:
    timeline = ExpiryTimeline()
    timeline.observe(events_of(*setup(), *shopper("a", s(0)), *shopper("b", s(3))))
    assert timeline.next_due() == s(10)
    assert timeline.due(s(9.999)) == []
    [expiry] = timeline.due(s(10))
    # The scheduler's own command: same id, so a recorded copy dedupes.
    grant = ids.grant_digest("a")
    assert expiry.command_id == ids.command_id("scheduler", ids.expiry_source_id(grant, s(10)))
    assert (expiry.grant_digest, expiry.ended_at, expiry.received_at) == (grant, s(10), s(10))
    assert (expiry.outcome, expiry.reason) == ("expired", "window_elapsed")
    assert timeline.next_due() == s(13)


def test_expiries_due_together_go_in_expires_at_then_grant_order() -> None:
    timeline = ExpiryTimeline()
    story = [*setup(), *shopper("z", s(1)), *shopper("y", s(1)), *shopper("x", s(0))]
    timeline.observe(events_of(*story))
    due = timeline.due(s(30))
    expected = [(s(10), ids.grant_digest("x"))]
    expected += sorted([(s(11), ids.grant_digest("y")), (s(11), ids.grant_digest("z"))])
    assert [(c.ended_at, c.grant_digest) for c in due] == expected
    assert timeline.next_due() is None


def test_an_ended_admission_is_not_expired_and_an_extended_one_later() -> None:
    story = [*setup(extension_seconds=30, max_extensions=1), *shopper("a", s(0))]
    story += [*shopper("b", s(1)), b.end(EXP, "b", "b", at=s(2)), b.extend(EXP, "a", "a", s(5))]
    timeline = ExpiryTimeline()
    timeline.observe(events_of(*story))
    assert [c.grant_digest for c in timeline.due(s(39))] == []
    assert [c.grant_digest for c in timeline.due(s(40))] == [ids.grant_digest("a")]


def test_an_admission_recorded_already_ended_is_not_on_the_timeline() -> None:
    story = [*setup(), b.end(EXP, "a", "a", at=s(1)), *shopper("a", s(0))]
    timeline = ExpiryTimeline()
    timeline.observe(events_of(*story))
    assert timeline.next_due() is None


def test_the_expiry_the_timeline_gives_ends_the_admission_in_the_engine() -> None:
    story: list[CommandBase] = [*setup(), *shopper("a", s(0))]
    timeline = ExpiryTimeline()
    timeline.observe(events_of(*story))
    expiry = timeline.due(s(10))
    ended = events_of(*story, *expiry)
    assert any(isinstance(e, AdmissionEnded) and e.status == "expired" for e in ended)
    timeline.observe(ended)
    assert timeline.next_due() is None


def test_an_expiry_the_recorded_scheduler_published_waits_for_its_copy() -> None:
    a, b = ids.grant_digest("a"), ids.grant_digest("b")
    timeline = ExpiryTimeline({expiry_id(a, s(10))})
    timeline.observe(events_of(*setup(), *shopper("a", s(0)), *shopper("b", s(3))))
    assert timeline.next_due() == s(13)
    assert [c.grant_digest for c in timeline.due(s(20))] == [b]
    copy = expiry_command(EXP, "a", a, s(10), s(10.4))
    other = expiry_command(EXP, "a", a, s(30), s(30.2))  # a window a did not have
    assert (timeline.claims(copy), timeline.claims(other)) == (True, False)
    assert timeline.meet(copy) is True
    assert timeline.meet(other) is False
    assert timeline.next_due() is None
    assert timeline.meet(copy) is True  # met again (its batch decided again): still its own


def test_an_expiry_whose_recorded_copy_passed_unclaimed_is_due_on_time() -> None:
    a = ids.grant_digest("a")
    copy = expiry_command(EXP, "a", a, s(10), s(10.4))
    timeline = ExpiryTimeline({copy.command_id})
    assert timeline.meet(copy) is False  # met before the simulation admitted a
    timeline.observe(events_of(*setup(), *shopper("a", s(0))))
    assert [c.command_id for c in timeline.due(s(10))] == [copy.command_id]


@pytest.mark.parametrize(
    ("times", "opened", "cut"),
    [
        ([0, 1, 2], [[10], [], []], None),  # every command before the expiry
        ([0, 1, 20, 21], [[10], [], [], []], 2),  # the third comes after it
        ([0, 5, 12], [[], [11], []], 2),  # opened by a later command
        ([20], [[10]], None),  # late already: it expires after its own command
        ([20, 20], [[10], []], 1),
        ([0, 10], [[10], []], 1),  # at the expiry itself: the expiry goes first
    ],
)
def test_a_batch_is_cut_at_the_first_command_after_an_expiry_it_opened(
    times: list[int], opened: list[list[int]], cut: int | None
) -> None:
    assert overrun([s(t) for t in times], [[s(d) for d in o] for o in opened]) == cut


# --- the outcome ------------------------------------------------------------------------


def test_the_outcome_counts_sales_the_peak_expiries_and_when_stock_ran_out() -> None:
    story = [*setup(), *shopper("a", s(0)), *shopper("b", s(1)), *shopper("c", s(2))]
    story += [b.complete(EXP, "a", "a", "order-1", at=s(4))]
    story += [*shopper("d", s(6))]  # a's unit is sold: still none free
    story += [b.end(EXP, "b", "b", outcome="expired", reason="admission_expired", at=s(11))]
    story += [*shopper("e", s(12))]  # b's unit is back
    tally = OutcomeTally()
    tally.feed(events_of(*story))
    o = tally.outcomes[EXP]
    assert (o.units_sold, o.peak_units_held, o.units_held) == (1, 2, 1)
    assert o.holds_expired_unused == 1
    assert dict(o.refusals) == {"INSUFFICIENT_STOCK": 2}
    assert (o.first_admission, o.sold_out_at, o.sold_out_after) == (
        s(0),
        s(2),
        timedelta(seconds=2),
    )


def test_a_late_sale_of_an_expired_hold_is_no_longer_unused() -> None:
    story = [*setup(), *shopper("a", s(0))]
    story += [b.end(EXP, "a", "a", outcome="expired", reason="admission_expired", at=s(10))]
    story += [b.complete(EXP, "a", "a", "order-1", at=s(8))]
    tally = OutcomeTally()
    tally.feed(events_of(*story))
    o = tally.outcomes[EXP]
    assert (o.units_sold, o.holds_expired_unused, o.units_held) == (1, 0, 0)


def test_an_empty_pool_is_the_stock_running_out_too() -> None:
    story = [*setup(strategy=Strategy.POOL, pool_size=1), *shopper("a", s(0)), *shopper("b", s(1))]
    tally = OutcomeTally()
    tally.feed(events_of(*story))
    o = tally.outcomes[EXP]
    assert (dict(o.refusals), o.sold_out_at, o.peak_units_held) == ({"POOL_EMPTY": 1}, s(1), 1)


def test_only_the_range_is_counted_and_units_held_carry_into_it() -> None:
    story = [*setup(), *shopper("a", s(0)), *shopper("b", s(1)), *shopper("c", s(2))]
    story += [b.end(EXP, "a", "a", at=s(5)), *shopper("d", s(6)), *shopper("e", s(7))]
    tally = OutcomeTally(Range(s(5), s(6.5)), {EXP})
    tally.feed(events_of(*story))
    o = tally.outcomes[EXP]
    # a ends (1 held), d holds (2 held); c's and e's refusals are outside.
    assert (o.peak_units_held, o.refused, o.first_admission, o.sold_out_at) == (2, 0, s(6), None)


def test_other_experiences_are_left_out() -> None:
    tally = OutcomeTally(experiences={"elsewhere"})
    tally.feed(events_of(*setup(), *shopper("a", s(0))))
    assert tally.outcomes == {}


# --- scenarios and the command line ----------------------------------------------------


def test_a_scenario_reads_overrides_by_name() -> None:
    scenario = parse("strategy=pool, pool-size=500,window=30,buffer=0,multi_item=all_or_nothing")
    assert scenario.update == {
        "strategy": Strategy.POOL,
        "pool_size": 500,
        "window_seconds": 30,
        "buffer_seconds": 0,
        "multi_item_policy": MultiItemPolicy.ALL_OR_NOTHING,
    }
    assert (
        scenario.label == "strategy=pool,pool_size=500,window=30,buffer=0,multi_item=all_or_nothing"
    )
    assert parse("recorded") is RECORDED


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("colour=red", "unknown override 'colour'"),
        ("window=0", "window=0: window_seconds: Input should be greater than or equal to 1"),
        ("strategy=fast", "'fast' is not a valid Strategy"),
        ("window", "expected name=value"),
        ("window=5,window=6", "window given twice"),
    ],
)
def test_a_wrong_scenario_is_refused_saying_why(spec: str, says: str) -> None:
    with pytest.raises(ScenarioError, match=says.replace("(", r"\(")):
        parse(spec)


def test_overrides_apply_to_recorded_settings_and_are_checked() -> None:
    [configure, _] = setup(extension_seconds=30)
    pooled = parse("strategy=pool,pool_size=5").apply(configure)
    assert (pooled.strategy, pooled.pool_size, pooled.extension_seconds) == ("pool", 5, 30)
    assert (pooled.command_id, pooled.experience_id) == (configure.command_id, EXP)
    with pytest.raises(ScenarioError, match="poolSize or pools is required"):
        parse("strategy=pool").apply(configure)
    assert RECORDED.apply(configure) is configure


def test_an_experience_without_configuration_gets_its_defaults_overridden() -> None:
    settings = parse("window=30").apply(ExperienceSettings(buffer_seconds=5))
    first = configuration(EXP, settings, s(0), "window=30")
    again = configuration(EXP, settings, s(0), "window=30")
    assert first.command_id == again.command_id
    assert (first.window_seconds, first.buffer_seconds, first.occurred_at) == (30, 5, s(0))


def _args(*argv: str) -> Any:
    return cli.parser().parse_args(["simulate", *argv])


def test_the_flags_make_one_scenario_and_each_scenario_option_another() -> None:
    args = _args(EXP, "--strategy", "pool", "--pool-size", "500", "--scenario", "window=30")
    labels = [c.label for c in scenarios(args)]
    assert labels == ["strategy=pool,pool_size=500", "window=30"]
    assert scenarios(_args("--all")) == [RECORDED]
    with pytest.raises(SystemExit):
        _args()
    with pytest.raises(SystemExit):
        _args(EXP, "--all")


def _settings() -> Settings:
    return load_settings(
        database_url="postgresql://nowhere/x",
        kafka_bootstrap_servers="nowhere:9092",
        fanfare_webhook_secret="whsec_test_current_0123456789",
        reservation_window_seconds=300,
        reservation_buffer_seconds=30,
    )


def test_backfill_is_an_override_and_an_unknown_setting_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert scenarios(_args(EXP, "--backfill", "on"))[0].update == {"backfill": True}
    assert scenarios(_args(EXP, "--backfill", "off"))[0].update == {"backfill": False}
    args = _args(EXP, "--scenario", "fairness=1")
    with pytest.raises(ScenarioError, match="unknown override 'fairness'"):
        scenarios(args)
    # Refused before anything is read or decided.
    assert asyncio.run(simulate.command(_settings(), args)) == 2
    assert "simulate: unknown override 'fairness'" in capsys.readouterr().err


def test_the_simulated_clock_ends_at_to_or_at_the_start_of_the_run() -> None:
    settings = _settings()
    past = plan(
        settings, _args(EXP, "--from", "2026-11-27T09:00:00Z", "--to", "2026-11-27T10:00:00Z")
    )
    assert (past.counted, past.until, past.horizon) == (Range(T0, s(3600)), s(3600), s(3600))
    assert past.experiences == {EXP}
    assert (past.defaults.window_seconds, past.defaults.buffer_seconds) == (300, 30)
    before = datetime.now(UTC)
    later = plan(settings, _args("--all", "--to", "2999-01-01T00:00:00Z"))
    assert later.experiences is None
    assert before <= later.horizon <= datetime.now(UTC)
