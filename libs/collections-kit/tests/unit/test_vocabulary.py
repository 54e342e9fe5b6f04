"""The shared names are defined once: the contract's types are derived from them."""

from __future__ import annotations

from typing import get_args

from collections_kit import contract as c
from collections_kit.vocabulary import Stage


def test_the_contract_names_every_stage_in_order() -> None:
    # A stage added to the vocabulary but not to the contract's Literal would be refused on
    # the wire: the Literal lists the members, this keeps the list complete.
    assert get_args(c.Stage) == tuple(Stage)


def test_a_decoded_stage_is_the_shared_name() -> None:
    schema = c.CaseStageChanged.model_json_schema()["properties"]["to_stage"]
    assert schema["enum"] == [s.value for s in Stage]
    changed = c.CaseStageChanged.model_validate_json(
        '{"case_id": "C1", "loan_id": "L1", "from_stage": "warning",'
        ' "to_stage": "formal_notice", "cause": "dpd", "policy_version": "v1",'
        ' "changed_at": "2026-11-23T10:00:00Z"}'
    )
    assert changed.to_stage is Stage.FORMAL_NOTICE
    assert changed.model_dump(mode="json")["to_stage"] == "formal_notice"
