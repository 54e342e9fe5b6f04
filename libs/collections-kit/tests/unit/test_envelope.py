"""CloudEvents binary mode round trip and the reasons malformed records get."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collections_kit import contract as c
from collections_kit.envelope import Envelope, MalformedMessageError, decode, encode

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def sample() -> Envelope:
    data = c.RepaymentReceived(
        repayment_id="R1",
        loan_id="L1",
        currency="CNY",
        amount=Decimal("0.10"),
        outstanding_balance_after=Decimal("9.90"),
        received_at=NOW,
    )
    return Envelope("id-1", "loan.repayment.received.v1", "lender", NOW, "L1", data)


def test_round_trip_keeps_exact_decimal_amounts() -> None:
    key, value, headers = encode(sample())
    assert key == b"L1"
    assert b'"amount":"0.10"' in value
    assert dict(headers)["ce_type"] == b"loan.repayment.received.v1"
    decoded = decode(key, value, headers)
    assert decoded.data == sample().data
    assert decoded.id == "id-1"


def test_a_float_amount_is_refused() -> None:
    key, value, headers = encode(sample())
    with pytest.raises(MalformedMessageError) as err:
        decode(key, value.replace(b'"0.10"', b"0.1"), headers)
    assert err.value.kind == "invalid"
    assert "amount" in err.value.reason


@pytest.mark.parametrize(
    ("amount", "accepted"),
    [
        (b'"99999999999999.999999"', True),
        (b'"-0.10"', False),
        (b'"100000000000000"', False),
        (b'"999999999999999.5"', False),
        (b'"0.1234567"', False),
    ],
)
def test_an_amount_is_refused_unless_the_amount_columns_hold_it(
    amount: bytes, accepted: bool
) -> None:
    """Every amount column is NUMERIC(20, 6): refused here, a larger amount is invalid
    input on the DLQ at once, not a database error that fails a consumer's whole poll."""
    key, value, headers = encode(sample())
    value = value.replace(b'"0.10"', amount)
    if accepted:
        assert isinstance(decode(key, value, headers).data, c.RepaymentReceived)
        return
    with pytest.raises(MalformedMessageError) as err:
        decode(key, value, headers)
    assert err.value.kind == "invalid"
    assert "amount" in err.value.reason


def test_amounts_built_in_code_are_held_to_the_same_limit() -> None:
    with pytest.raises(ValueError, match="14 digits"):
        c.RepaymentReceived(
            repayment_id="R1",
            loan_id="L1",
            currency="CNY",
            amount=Decimal("1E14"),
            outstanding_balance_after=Decimal(0),
            received_at=NOW,
        )


@pytest.mark.parametrize("field", ["amount_overdue", "outstanding_balance"])
def test_a_negative_amount_owed_is_invalid(field: str) -> None:
    """An overdue with outstanding -5000 opened a case and recorded contact intents."""
    data = c.LoanOverdue(
        loan_id="L1",
        borrower_id="B1",
        currency="CNY",
        amount_overdue=Decimal("500"),
        outstanding_balance=Decimal("5000"),
        days_past_due=5,
        as_of=NOW,
        borrower_time_zone="Asia/Shanghai",
        jurisdiction="CN",
    )
    key, value, headers = encode(Envelope("id-3", "loan.overdue.v1", "lender", NOW, "L1", data))
    value = value.replace(f'"{field}":"'.encode(), f'"{field}":"-'.encode())
    with pytest.raises(MalformedMessageError) as err:
        decode(key, value, headers)
    assert err.value.kind == "invalid"
    assert field in err.value.reason
    with pytest.raises(ValueError, match="negative"):
        c.RepaymentReceived(
            repayment_id="R1",
            loan_id="L1",
            currency="CNY",
            amount=Decimal("-1"),
            outstanding_balance_after=Decimal(0),
            received_at=NOW,
        )


def test_signed_amounts_stay_signed() -> None:
    """A ledger posting is signed by its effect on what is owed (a repayment is negative),
    and a correction may report an overpaid loan's ledger balance below zero."""
    posting = c.LedgerPostingBooked(
        posting_id="P1",
        loan_id="L1",
        sequence=2,
        kind="repayment",
        currency="CNY",
        amount=Decimal("-10"),
        booked_at=NOW,
    )
    assert posting.amount == Decimal("-10")
    assert c.BalanceCorrected(
        loan_id="L1",
        kind="nothing_owed",
        currency="CNY",
        ledger_outstanding=Decimal("-0.50"),
        ledger_watermark=2,
        corrected_at=NOW,
    ).ledger_outstanding == Decimal("-0.50")
    schema = c.LoanOverdue.model_json_schema()["properties"]["outstanding_balance"]
    assert "-" not in schema["pattern"]
    assert schema["pattern"].startswith("^\\d")


@pytest.mark.parametrize(("sequence", "accepted"), [(2**63 - 1, True), (2**63, False)])
def test_a_ledger_sequence_is_refused_unless_a_bigint_holds_it(
    sequence: int, accepted: bool
) -> None:
    data = c.LedgerPostingBooked(
        posting_id="P1",
        loan_id="L1",
        sequence=1,
        kind="disbursement",
        currency="CNY",
        amount=Decimal("1"),
        booked_at=NOW,
    )
    key, value, headers = encode(
        Envelope("id-2", "ledger.posting.booked.v1", "ledger", NOW, "L1", data)
    )
    value = value.replace(b'"sequence":1', b'"sequence":' + str(sequence).encode())
    if accepted:
        decoded = decode(key, value, headers).data
        assert isinstance(decoded, c.LedgerPostingBooked)
        assert decoded.sequence == sequence
        return
    with pytest.raises(MalformedMessageError) as err:
        decode(key, value, headers)
    assert err.value.kind == "invalid"
    assert "sequence" in err.value.reason


def test_a_key_that_differs_from_the_loan_is_refused() -> None:
    _, value, headers = encode(sample())
    with pytest.raises(MalformedMessageError):
        decode(b"L2", value, headers)


@given(
    st.binary(max_size=200),
    st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=40)), max_size=8),
)
def test_arbitrary_bytes_raise_only_malformed_message(
    value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    # Either it decodes, or it is refused as malformed, saying why (any other exception
    # fails the test).
    try:
        decode(b"L1", value, headers)
    except MalformedMessageError as exc:
        refused = exc
    else:
        return
    assert refused.reason


@pytest.mark.parametrize(
    ("code", "accepted"), [("FR", True), ("CN", True), ("usa", False), ("U1", False), ("", False)]
)
def test_a_jurisdiction_has_the_shape_of_an_iso_3166_code(code: str, accepted: bool) -> None:
    """Which codes have a policy is each service's policy data, not the contract's."""

    def overdue() -> c.LoanOverdue:
        return c.LoanOverdue(
            loan_id="L1",
            borrower_id="B1",
            currency="EUR",
            amount_overdue=Decimal(1),
            outstanding_balance=Decimal(2),
            days_past_due=1,
            as_of=NOW,
            borrower_time_zone="Europe/Paris",
            jurisdiction=code,
        )

    if accepted:
        assert overdue().jurisdiction == code
        return
    with pytest.raises(ValueError, match="jurisdiction"):
        overdue()
