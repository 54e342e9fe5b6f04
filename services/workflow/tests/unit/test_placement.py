"""Agency placement, pure: who gets a case, when it comes back, what the agency earns.

Each input is decided by the workflow's ``decide`` first and then by ``place``, exactly as
the app does it (app/handlers.py), against the shipped placement policy.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workflow.adapters.placement_file import load_placement_policy
from workflow.adapters.placements import PlacementBatch
from workflow.adapters.policy_file import PolicyError
from workflow.domain import decide as d
from workflow.domain import messages as m
from workflow.domain import placement as pl
from workflow.domain.model import Case, ContactIntent, TimerKind
from workflow.domain.policy import DEFAULT_POLICY, Stage

SHIPPED = Path(__file__).resolve().parents[2] / "src/workflow/policies/placements.toml"
POLICY = load_placement_policy(SHIPPED)
START = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@dataclass
class World:
    """One loan: its case, intents and placements, as the app keeps them."""

    loan_id: str = "L1"
    now: datetime = START
    case: Case | None = None
    intents: dict[str, ContactIntent] = field(default_factory=dict)
    placements: dict[str, pl.Placement] = field(default_factory=dict)
    newest: pl.Placement | None = None
    notices: list[pl.Notice] = field(default_factory=list)
    accruals: list[pl.Accrual] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    n: int = 0
    policy: pl.PlacementPolicy = POLICY

    def run(self, event: d.Input) -> pl.PlacementOutcome | None:
        self.n += 1
        cause = f"c{self.n}"
        decision = d.decide(
            self.case,
            list(self.intents.values()),
            event,
            DEFAULT_POLICY,
            self.now,
            lambda label: f"{cause}/{label}",
        )
        if decision.rejected is not None:
            return None
        self.case = decision.case or self.case
        self.intents.update({i.intent_id: i for i in decision.intents})
        if self.case is None:
            return None
        outcome = pl.place(
            self.case,
            event,
            self.newest,
            self.policy,
            self.now,
            lambda label: f"{cause}/{label}",
            reversed_accrual=self._accrued(event),
        )
        for p in outcome.placements:
            self.placements[p.placement_id] = p
            if self.newest is None or self.newest.placement_id == p.placement_id or p.is_active:
                self.newest = p
        self.notices.extend(outcome.notices)
        self.accruals.extend(outcome.accruals)
        self.timeline.extend(kind for kind, _ in outcome.timeline)
        return outcome

    def _accrued(self, event: d.Input) -> pl.Accrual | None:
        """What the repository finds for a reversal: the accrual, unless reversed before."""
        if not isinstance(event, m.RepaymentReversed):
            return None
        ids = [a.repayment_id for a in self.accruals]
        if f"{event.repayment_id}/reversed" in ids:
            return None
        found = [a for a in self.accruals if a.repayment_id == event.repayment_id]
        if not found:
            return None
        accrual = found[0]
        return replace(accrual, placement=self.placements[accrual.placement.placement_id])

    def running(self) -> list[pl.Placement]:
        return [p for p in self.placements.values() if p.is_active]

    def overdue(self, dpd: int, outstanding: str = "5000.00") -> pl.PlacementOutcome | None:
        # Each report newer than the last: an older one changes nothing.
        self.now += timedelta(hours=1)
        self.n += 1
        return self.run(
            m.OverdueReported(
                f"o{self.n}",
                self.loan_id,
                "B1",
                "consumer-loan",
                "CNY",
                Decimal("500.00"),
                Decimal(outstanding),
                dpd,
                self.now,
                "Asia/Shanghai",
                "CN",
            )
        )

    def repay(self, amount: str, after: str) -> pl.PlacementOutcome | None:
        self.n += 1
        return self.run(
            m.RepaymentReceived(
                f"r{self.n}", f"R{self.n}", Decimal(amount), Decimal(after), self.now
            )
        )

    def hold(self, kind: str = "hardship") -> pl.PlacementOutcome | None:
        self.n += 1
        return self.run(m.RequestHold(f"h{self.n}", kind, "documents received", "agent"))

    def resume(self) -> pl.PlacementOutcome | None:
        self.n += 1
        return self.run(m.RequestResume(f"u{self.n}", "hold over", "agent", "debt confirmed"))

    def close(self) -> pl.PlacementOutcome | None:
        self.n += 1
        return self.run(m.RequestClosure(f"x{self.n}", "written_off", "uncollectable", "agent"))

    def expire(self) -> pl.PlacementOutcome | None:
        running = self.running()
        assert running
        self.now = max(self.now, running[0].until)
        return self.run(
            m.TimerFired(
                "t-" + running[0].placement_id,
                TimerKind.PLACEMENT_EXPIRY.value,
                running[0].placement_id,
                running[0].until,
            )
        )

    def to_formal_notice(self) -> None:
        self.overdue(5)
        self.now += timedelta(days=1)
        self.overdue(45)
        assert self.case is not None
        assert self.case.stage is Stage.FORMAL_NOTICE


def kinds(notices: list[pl.Notice]) -> list[str]:
    return [n.kind for n in notices]


def test_a_case_in_a_tier_stage_past_its_days_is_placed_with_one_agency_until_the_period() -> None:
    world = World()
    world.to_formal_notice()
    (placement,) = world.running()
    assert placement.tier == "primary"
    assert placement.agency in {"agency-north", "agency-south"}
    assert placement.until == world.now + timedelta(days=90)
    assert placement.amount_placed == Decimal("5000.00")
    assert kinds(world.notices) == ["placed"]
    assert "case_placed" in world.timeline


def test_a_case_in_warning_or_below_the_balance_band_is_not_placed() -> None:
    world = World()
    world.overdue(5)
    assert world.running() == []
    small = World()
    small.overdue(5, outstanding="50.00")
    small.now += timedelta(days=1)
    small.overdue(45, outstanding="50.00")
    assert small.running() == []


def test_the_agency_is_the_same_for_a_case_id_and_follows_the_shares() -> None:
    (primary, _) = POLICY.tiers
    chosen = Counter(primary.agency_for(f"case-{i}").agency for i in range(2000))
    assert primary.agency_for("case-7") == primary.agency_for("case-7")
    # 60 / 40 within sampling noise.
    assert 0.55 < chosen["agency-north"] / 2000 < 0.65


def test_a_full_repayment_accrues_commission_then_recalls_once() -> None:
    world = World()
    world.to_formal_notice()
    (placement,) = world.running()
    world.notices.clear()
    world.repay("5000.00", "0.00")
    assert kinds(world.notices) == ["repaid", "recalled"]
    assert world.notices[-1].reason is pl.RecallReason.REPAID
    assert world.running() == []
    (accrual,) = world.accruals
    assert accrual.commission == (Decimal("5000.00") * placement.commission_rate).quantize(
        Decimal("0.01")
    )


def test_partial_payments_accrue_commission_in_minor_units_and_keep_the_placement() -> None:
    world = World()
    world.to_formal_notice()
    world.notices.clear()
    world.repay("333.33", "4666.67")
    (running,) = world.running()
    assert kinds(world.notices) == ["repaid"]
    assert running.collected == Decimal("333.33")
    # 333.33 * 0.20 = 66.666 or * 0.22 = 73.3326: rounded to the fen, half up.
    assert running.commission in (Decimal("66.67"), Decimal("73.33"))
    assert running.commission.as_tuple().exponent == -2


def test_a_reversed_repayment_takes_its_commission_back_once() -> None:
    world = World()
    world.to_formal_notice()
    world.repay("400.00", "4600.00")
    (paid,) = world.running()
    assert paid.commission > 0
    repayment_id = world.accruals[0].repayment_id
    for _ in range(2):  # a second reversal of the same repayment takes nothing more
        world.n += 1
        world.run(
            m.RepaymentReversed(
                f"v{world.n}", repayment_id, Decimal("400.00"), Decimal("5000.00"), world.now
            )
        )
    (back,) = world.running()
    assert back.collected == Decimal("0.00")
    assert back.commission == Decimal("0.00")
    assert sum(a.commission for a in world.accruals) == 0
    assert world.timeline.count("placement_commission_reversed") == 1


def named(cause: str) -> Callable[[str], str]:
    return lambda label: f"{cause}/{label}"


def test_two_reversals_in_one_batch_take_back_from_the_placement_as_it_then_is() -> None:
    """The batch's bookkeeping (adapters/placements.PlacementBatch), as the app and the
    replay both use it: two payments on a placement that expired (the case moved on to the
    next tier's agency), both bounced in one batch; each reversal starts from what the one
    before left, not from the placement as loaded."""
    world = World()
    world.to_formal_notice()
    world.repay("100.00", "4900.00")
    world.repay("200.00", "4700.00")
    world.overdue(95, outstanding="4700.00")
    world.expire()
    (ended,) = [p for p in world.placements.values() if p.tier == "primary"]
    (current,) = world.running()
    assert current.tier == "secondary"
    assert ended.collected == Decimal("300.00")
    # As loaded from the store for the batch: both accruals, each with the ended placement;
    # the loan's newest placement is the secondary tier's.
    batch = PlacementBatch({world.loan_id: current})
    batch.reversible = {
        (world.loan_id, a.repayment_id): replace(a, placement=ended) for a in world.accruals
    }
    assert world.case is not None
    for n, accrual in enumerate(world.accruals):
        event = m.RepaymentReversed(
            f"v{n}", accrual.repayment_id, accrual.amount, Decimal("5000.00"), world.now
        )
        taken = batch.take_reversible(world.loan_id, accrual.repayment_id)
        assert taken is not None
        batch.record(
            pl.place(
                world.case,
                event,
                batch.newest.get(world.loan_id),
                POLICY,
                world.now,
                named(event.event_id),
                reversed_accrual=taken,
            )
        )
    back = batch.changed[ended.placement_id]
    assert (back.collected, back.commission) == (Decimal("0.00"), Decimal("0.00"))
    # A third reversal of either finds nothing left to take back.
    assert batch.take_reversible(world.loan_id, world.accruals[0].repayment_id) is None


def test_a_repayment_accrued_in_a_batch_is_reversible_later_in_it() -> None:
    world = World()
    world.to_formal_notice()
    (placement,) = world.running()
    batch = PlacementBatch({world.loan_id: placement})
    assert world.case is not None
    batch.record(
        pl.place(
            world.case,
            m.RepaymentReceived(
                "r", "R-in-batch", Decimal("400.00"), Decimal("4600.00"), world.now
            ),
            placement,
            POLICY,
            world.now,
            lambda label: f"r/{label}",
        )
    )
    taken = batch.take_reversible(world.loan_id, "R-in-batch")
    assert taken is not None
    assert taken.amount == Decimal("400.00")
    assert batch.take_reversible(world.loan_id, "R-in-batch") is None


def test_commission_is_rounded_to_the_currency_minor_unit() -> None:
    assert pl.commission_on(Decimal("1001"), Decimal("0.25"), "JPY") == Decimal("250")
    assert pl.commission_on(Decimal("10.005"), Decimal("0.1"), "KWD") == Decimal("1.001")
    assert pl.commission_on(Decimal("0.05"), Decimal("0.5"), "EUR") == Decimal("0.03")


def test_the_liquidation_rate_is_collected_over_placed_to_four_places() -> None:
    assert pl.liquidation_rate(Decimal("750.00"), Decimal("1500.00")) == Decimal("0.5000")
    assert pl.liquidation_rate(Decimal("1"), Decimal("3")) == Decimal("0.3333")
    assert pl.liquidation_rate(Decimal("2"), Decimal("3")) == Decimal("0.6667")
    assert pl.liquidation_rate(Decimal("0.00005"), Decimal("1")) == Decimal("0.0001")  # half up
    assert pl.liquidation_rate(Decimal("0"), Decimal("100")) == Decimal("0.0000")
    # Nothing placed: no rate (not a zero that reads as a failed agency).
    assert pl.liquidation_rate(Decimal("0"), Decimal("0")) is None


@given(
    collected=st.decimals(min_value=0, max_value=10**9, places=2),
    placed=st.decimals(min_value=Decimal("0.01"), max_value=10**9, places=2),
)
def test_the_liquidation_rate_is_within_half_a_basis_point_of_the_ratio(
    collected: Decimal, placed: Decimal
) -> None:
    rate = pl.liquidation_rate(collected, placed)
    assert rate is not None
    assert abs(rate - collected / placed) <= Decimal("0.00005")


def test_a_hold_recalls_and_the_end_of_the_hold_gives_the_case_back_to_the_same_agency() -> None:
    world = World()
    world.to_formal_notice()
    (first,) = world.running()
    world.notices.clear()
    world.hold()
    assert kinds(world.notices) == ["held", "recalled"]
    assert world.notices[-1].reason is pl.RecallReason.HOLD
    assert world.running() == []
    world.now += timedelta(days=10)
    world.resume()
    (back,) = world.running()
    assert kinds(world.notices)[-1] == "resumed"
    assert back.agency == first.agency
    assert back.until == first.until
    assert back.placement_id != first.placement_id


def test_a_dispute_recalls_with_reason_dispute() -> None:
    world = World()
    world.to_formal_notice()
    world.hold("dispute")
    assert world.notices[-1].kind == "recalled"
    assert world.notices[-1].reason is pl.RecallReason.DISPUTE


def test_a_closure_recalls_with_reason_closure() -> None:
    world = World()
    world.to_formal_notice()
    world.close()
    assert world.notices[-1].reason is pl.RecallReason.CLOSURE
    assert world.running() == []


def test_expiry_recalls_and_moves_the_case_on_to_the_next_tier_that_admits_it() -> None:
    world = World()
    world.to_formal_notice()
    world.overdue(95)  # past the secondary tier's 90 days (and on to guarantor recourse)
    world.notices.clear()
    world.expire()
    assert kinds(world.notices) == ["recalled", "placed"]
    assert world.notices[0].reason is pl.RecallReason.EXPIRY
    (second,) = world.running()
    assert second.tier == "secondary"
    assert second.agency == "agency-east"
    assert second.tier_index == 1
    # After the last tier the case stays with the lender.
    world.expire()
    assert world.running() == []
    world.overdue(200)
    assert world.running() == []


def test_escalating_past_the_tiers_stages_recalls_at_once_with_reason_stage_changed() -> None:
    world = World()
    world.to_formal_notice()
    world.overdue(65)  # guarantor recourse: still a stage the primary tier takes
    (placement,) = world.running()
    world.notices.clear()
    world.overdue(95)
    assert world.case is not None
    assert world.case.stage is Stage.LITIGATION
    assert kinds(world.notices) == ["recalled"]
    assert world.notices[0].reason is pl.RecallReason.STAGE_CHANGED
    assert world.notices[0].placement.placement_id == placement.placement_id
    assert world.placements[placement.placement_id].end_reason is pl.RecallReason.STAGE_CHANGED
    # No tier takes litigation: the case stays with the lender, and nothing more is sent.
    assert world.running() == []
    world.overdue(120)
    assert kinds(world.notices) == ["recalled"]
    assert world.timeline.count("placement_recalled") == 1


def test_a_payment_that_clears_the_arrears_accrues_then_recalls_as_the_stage_changes() -> None:
    world = World()
    world.to_formal_notice()
    (placement,) = world.running()
    world.notices.clear()
    world.repay("4950.00", "50.00")  # the arrears paid: back to warning, not a tier stage
    assert world.case is not None
    assert world.case.stage is Stage.WARNING
    assert kinds(world.notices) == ["repaid", "recalled"]
    assert world.notices[-1].reason is pl.RecallReason.STAGE_CHANGED
    ended = world.placements[placement.placement_id]
    assert ended.collected == Decimal("4950.00")
    assert ended.end_reason is pl.RecallReason.STAGE_CHANGED
    assert world.running() == []


def _banded() -> pl.PlacementPolicy:
    small, large = (
        pl.PlacementTier(
            tier,
            (Stage.FORMAL_NOTICE, Stage.GUARANTOR_RECOURSE),
            30,
            Decimal(low),
            Decimal(high) if high else None,
            timedelta(days=90),
            (pl.AgencyShare(agency, 1, Decimal("0.2")),),
        )
        for tier, low, high, agency in (
            ("small", "100", "1000", "agency-small"),
            ("large", "1000", None, "agency-large"),
        )
    )
    return pl.PlacementPolicy("placements/banded", (small, large))


def test_a_balance_that_grows_out_of_the_band_goes_to_the_tier_that_takes_it_at_once() -> None:
    world = World(policy=_banded())
    world.overdue(5, outstanding="900.00")
    world.now += timedelta(days=1)
    world.overdue(45, outstanding="900.00")
    (small,) = world.running()
    assert small.tier == "small"
    world.notices.clear()
    # A bounced payment (nothing accrued on it) puts the balance over the band's 1000.
    world.n += 1
    world.run(m.RepaymentReversed("v1", "R-before", Decimal(600), Decimal("1500.00"), world.now))
    assert kinds(world.notices) == ["recalled", "placed"]
    assert world.notices[0].reason is pl.RecallReason.OUT_OF_TIER
    (large,) = world.running()
    assert (large.tier, large.agency, large.amount_placed) == (
        "large",
        "agency-large",
        Decimal("1500.00"),
    )


def test_a_payment_that_takes_the_balance_below_the_band_recalls_out_of_tier() -> None:
    world = World(policy=_banded())
    world.overdue(5, outstanding="1200.00")
    world.now += timedelta(days=1)
    world.overdue(45, outstanding="1200.00")
    (large,) = world.running()
    assert large.tier == "large"
    world.notices.clear()
    world.repay("300.00", "900.00")  # part of the arrears: still formal notice
    assert world.case is not None
    assert world.case.stage is Stage.FORMAL_NOTICE
    assert kinds(world.notices) == ["repaid", "recalled"]
    assert world.notices[-1].reason is pl.RecallReason.OUT_OF_TIER
    assert world.placements[large.placement_id].collected == Decimal("300.00")
    # Tiers are gone through in order: never back to an earlier one ("small").
    assert world.running() == []


def test_a_hold_does_not_resume_into_a_tier_the_case_no_longer_fits() -> None:
    world = World()
    world.to_formal_notice()
    world.hold()
    world.repay("4950.00", "50.00")  # paid down while held: below the band
    world.notices.clear()
    world.resume()
    assert world.notices == []
    assert world.running() == []


def test_a_placement_whose_tier_left_the_policy_keeps_its_period() -> None:
    world = World()
    world.to_formal_notice()
    (placement,) = world.running()
    renamed = replace(POLICY.tiers[0], tier="renamed", stages=(Stage.WARNING,))
    world.policy = replace(POLICY, tiers=(renamed, POLICY.tiers[1]))
    world.overdue(50)
    assert world.running() == [placement]


def test_a_stale_expiry_timer_does_nothing() -> None:
    world = World()
    world.to_formal_notice()
    (placement,) = world.running()
    world.hold()
    world.resume()
    world.notices.clear()
    world.run(
        m.TimerFired("t-old", TimerKind.PLACEMENT_EXPIRY.value, placement.placement_id, START)
    )
    assert world.notices == []
    assert len(world.running()) == 1


def test_the_decision_of_the_case_ignores_a_placement_timer() -> None:
    world = World()
    world.to_formal_notice()
    assert world.case is not None
    decision = d.decide(
        world.case,
        [],
        m.TimerFired("t", TimerKind.PLACEMENT_EXPIRY.value, "p", world.now),
        DEFAULT_POLICY,
        world.now,
        lambda label: label,
    )
    assert decision == d.Decision(case=None)


def test_the_shipped_placement_file_loads_and_a_bad_one_is_refused(tmp_path: Path) -> None:
    assert [t.tier for t in POLICY.tiers] == ["primary", "secondary"]
    for broken in (
        ("share = 60", "share = 0"),
        ('commission_rate = "0.20"', 'commission_rate = "1.5"'),
        ('agency = "agency-north"', 'agency = "agency south"'),
        ("period_days = 90", "period_days = 0"),
        (
            'stages = ["formal_notice", "guarantor_recourse"]\nmin_days_past_due = 45',
            'stages = ["nope"]\nmin_days_past_due = 45',
        ),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(SHIPPED.read_text().replace(*broken, 1))
        with pytest.raises(PolicyError):
            load_placement_policy(bad)


# --- properties --------------------------------------------------------------------------

STEPS = st.lists(
    st.sampled_from(
        ["overdue", "partial", "full", "hold", "dispute", "resume", "close", "expire", "reverse"]
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(steps=STEPS, dpd_step=st.integers(1, 40))
def test_never_two_agencies_at_once_and_each_end_of_a_placement_is_one_recall(
    steps: list[str], dpd_step: int
) -> None:
    world = World()
    world.to_formal_notice()
    dpd, outstanding = 45, Decimal("5000.00")
    for step in steps:
        world.now += timedelta(days=1)
        running_before = world.running()
        outcome: pl.PlacementOutcome | None = None
        match step:
            case "overdue":
                dpd += dpd_step
                outcome = world.overdue(dpd, str(outstanding))
            case "partial":
                if outstanding > 200:
                    outstanding -= 100
                    outcome = world.repay("100.00", str(outstanding))
            case "full":
                outcome = world.repay(str(outstanding), "0.00")
                outstanding = Decimal(0)
            case "hold" | "dispute":
                outcome = world.hold("dispute" if step == "dispute" else "hardship")
            case "resume":
                outcome = world.resume()
            case "close":
                outcome = world.close()
            case "expire":
                if running_before:
                    outcome = world.expire()
            case "reverse":
                world.n += 1
                outstanding += 100
                outcome = world.run(
                    m.RepaymentReversed(
                        f"v{world.n}", f"R{world.n}", Decimal(100), outstanding, world.now
                    )
                )
        assert len(world.running()) <= 1, "placed with two agencies at once"
        if outcome is None:
            continue
        recalls = [n for n in outcome.notices if n.kind == "recalled"]
        case = world.case
        assert case is not None
        if running_before and pl.recall_reason(case) is not None:
            # Repaid, held or closed while placed: exactly one recall, of that placement.
            assert len(recalls) == 1
            assert recalls[0].placement.placement_id == running_before[0].placement_id
            assert world.running() == []
        else:
            assert len(recalls) <= 1
            if recalls:
                assert recalls[0].reason in (
                    pl.RecallReason.EXPIRY,
                    pl.RecallReason.STAGE_CHANGED,
                    pl.RecallReason.OUT_OF_TIER,
                )
                if recalls[0].reason is not pl.RecallReason.EXPIRY:
                    # Left its tier: the reason is the tier's own verdict on the case.
                    left = pl.tier_left(case, running_before[0], POLICY)
                    assert left is recalls[0].reason
        for notice in recalls:
            assert notice.placement.ended_at is not None
        if pl.recall_reason(case) is not None:
            assert world.running() == [], "a repaid, held or closed case stays placed"
        for running in world.running():
            # A case is placed only while its tier's rules take it.
            assert pl.tier_left(case, running, POLICY) is None, "placed outside its tier"
