"""What becomes of an attempt whose outcome a crash left unknown (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from notifier.domain.in_doubt import (
    Found,
    InDoubt,
    InDoubtRule,
    LookAgain,
    LookupFailed,
    NotFound,
    SendAgain,
    Settle,
    in_doubt_rules_from_mapping,
    resolve,
)

LATER = datetime(2026, 12, 4, 12, tzinfo=UTC)


def test_a_channel_that_cannot_be_asked_leaves_it_in_doubt_unless_a_rule_resends() -> None:
    assert resolve("email", None, InDoubtRule(), look_again_at=LATER) == InDoubt(
        "channel.email.in_doubt"
    )
    assert resolve("letter", None, InDoubtRule(resend=True), look_again_at=LATER) == SendAgain(
        "channel.letter.in_doubt", "in_doubt_rule_resend", reached_nobody=False
    )


def test_an_answer_from_the_channel_settles_it_whatever_the_rule() -> None:
    for rule in (InDoubtRule(), InDoubtRule(resend=True)):
        assert resolve("sms", Found("delivered", "m-1"), rule, look_again_at=LATER) == Settle(
            "delivered", "m-1", "channel.sms.in_doubt"
        )
        assert resolve("voice", NotFound(), rule, look_again_at=LATER) == SendAgain(
            "channel.voice.in_doubt", "not_at_provider", reached_nobody=True
        )
        assert resolve("sms", LookupFailed("provider_503"), rule, look_again_at=LATER) == LookAgain(
            LATER, "channel.sms.in_doubt"
        )


def test_the_rules_are_policy_data_and_a_typo_is_refused() -> None:
    assert in_doubt_rules_from_mapping({"letter": {"resend": True}}) == {
        "letter": InDoubtRule(resend=True)
    }
    with pytest.raises(ValueError, match="unknown channel"):
        in_doubt_rules_from_mapping({"fax": {"resend": True}})
    with pytest.raises(ValueError, match="unknown keys"):
        in_doubt_rules_from_mapping({"email": {"resent": True}})
    with pytest.raises(ValueError, match="true or false"):
        in_doubt_rules_from_mapping({"email": {"resend": "yes"}})
