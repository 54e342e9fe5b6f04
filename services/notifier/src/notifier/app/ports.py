"""The notifier's ports: to the outside world, a channel that carries one message (and,
where the provider takes them, many at once); to storage, the repository in one unit of
work (implemented in adapters/uow.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from collections_kit.uow import UnitOfWork
from notifier.domain.in_doubt import Found, NotFound
from notifier.domain.model import (
    AttemptResult,
    ChannelName,
    ContactRequest,
    DeliveryStatus,
    Dispatch,
    Language,
    Recipient,
)
from notifier.domain.permits import (
    ConfirmationView,
    Permit,
    PermitAsk,
    PermitDecision,
    PermitResult,
)
from notifier.domain.receipts import Receipt

if TYPE_CHECKING:  # the adapters implement these ports (and import this module)
    from notifier.adapters.repository import BatchContext, DecisionRecord, DispatchRepository


@dataclass(frozen=True)
class OutgoingMessage:
    """A rendered message, ready for a channel. Address, name and text are personal data."""

    # Also the idempotency key towards the provider (the SMTP Message-ID, a provider's
    # dedupe key): a retry after an unknown outcome must not reach the person twice.
    command_id: str
    loan_id: str
    channel: ChannelName
    recipient: Recipient
    language: Language
    template: str
    address: str = field(repr=False)
    subject: str = field(repr=False)
    body: str = field(repr=False)
    name: str | None = field(default=None, repr=False)
    # The local date the message is dated (a letter prints it).
    dated: date | None = None


@dataclass(frozen=True)
class Delivery:
    """What the channel knows once it has handed the message over."""

    status: DeliveryStatus = "sent"
    # The provider's own id for the message or call (safe to store and log).
    provider_ref: str | None = None


class SendError(Exception):
    """A channel could not deliver. ``code`` is safe to log and store; it never carries
    the address or any text of the message.

    ``outcome_unknown``: the channel may have taken the message all the same (a timeout or
    a dropped connection after the hand-over began). Such a send is not retried: it is
    settled like a crash mid-send once its lease runs out (notifier.domain.in_doubt)."""

    def __init__(self, code: str, *, permanent: bool, outcome_unknown: bool = False) -> None:
        super().__init__(code)
        self.code = code
        self.permanent = permanent
        self.outcome_unknown = outcome_unknown and not permanent


class Channel(Protocol):
    async def send(self, message: OutgoingMessage) -> Delivery:
        """Deliver or raise :class:`SendError`. Must be safe to repeat for one command:
        the command id is the idempotency key towards the provider."""
        ...


@runtime_checkable
class LookupChannel(Channel, Protocol):
    """A channel that can say whether it already has a message, by its idempotency key (the
    command id). The dispatcher asks it about an attempt whose outcome a crash left
    unknown, instead of sending again (notifier.domain.in_doubt)."""

    async def lookup(self, command_id: str, channel: ChannelName) -> Found | NotFound:
        """What the provider knows of the message; raise :class:`SendError` if it cannot
        be asked now. Sends nothing."""
        ...


@runtime_checkable
class BatchChannel(Channel, Protocol):
    """A channel that takes a dispatch pass's messages in one call (a provider's bulk API,
    or the development recorder's one statement). The dispatcher uses it when a channel
    has it; the rules of ``send`` hold for every message."""

    async def send_many(self, messages: Sequence[OutgoingMessage]) -> list[Delivery | SendError]:
        """One outcome per message, in order: what ``send`` would have returned or raised."""
        ...


# --- storage ---------------------------------------------------------------------------------


class SentRecords(Protocol):
    async def record_sent_many(
        self, sent: Sequence[tuple[DecisionRecord, str, str | None]]
    ) -> list[int]: ...


class ReceiptStore(SentRecords, Protocol):
    """What taking a delivery receipt reads and writes."""

    async def claim_receipt(self, receipt: Receipt, *, now: datetime) -> bool: ...

    async def receipt_target(self, receipt: Receipt) -> tuple[Dispatch, AttemptResult] | None: ...

    async def note_receipt_effect(
        self, receipt: Receipt, *, effect: str, command_id: str | None
    ) -> None: ...

    async def settle_by_receipt(
        self, command_id: str, *, result: AttemptResult, provider_ref: str | None, now: datetime
    ) -> None: ...


class ReceiptUnitOfWork(UnitOfWork, Protocol):
    @property
    def dispatches(self) -> ReceiptStore: ...


class DispatchUnitOfWork(UnitOfWork, Protocol):
    @property
    def dispatches(self) -> DispatchRepository: ...


class StartReceiptUnitOfWork(Protocol):
    def __call__(self) -> ReceiptUnitOfWork: ...


class StartDispatchUnitOfWork(Protocol):
    def __call__(self) -> DispatchUnitOfWork: ...


class ContactContexts(Protocol):
    """The dispatcher's context loading (DispatchRepository.contexts), locks included."""

    async def contexts(
        self, batch: Sequence[Dispatch], *, repayments_since: datetime, attempts_since: datetime
    ) -> BatchContext: ...


class PermitStore(Protocol):
    """What deciding a permit and taking its result read and write (adapters/permits.py)."""

    async def anchor(self, loan_id: str) -> ContactRequest | None: ...

    async def confirmations(self, loan_id: str) -> ConfirmationView: ...

    async def confirmation_asked(self, loan_id: str, *, now: datetime) -> None: ...

    async def settle_unreported(self, person: str, *, now: datetime) -> None: ...

    async def record(
        self,
        permit_id: str,
        ask: PermitAsk,
        decision: PermitDecision,
        *,
        actor_kind_from: str,
        anchor: ContactRequest,
        person: str,
        number: str | None,
        policy_version: str,
        now: datetime,
        expires_at: datetime,
        result_by: datetime,
    ) -> None: ...

    async def get(self, permit_id: str, *, lock: bool = False) -> Permit | None: ...

    async def record_result(
        self, permit_id: str, result: PermitResult, attempt: AttemptResult, *, now: datetime
    ) -> None: ...

    async def of_loan(self, loan_id: str, *, limit: int = 200) -> Sequence[Permit]: ...

    async def summary(self) -> list[tuple[str, str, str, int]]: ...


class PermitUnitOfWork(UnitOfWork, Protocol):
    """A contact permit is decided on the dispatcher's own context loading (and locks)."""

    @property
    def dispatches(self) -> ContactContexts: ...

    @property
    def permits(self) -> PermitStore: ...


class StartPermitUnitOfWork(Protocol):
    def __call__(self) -> PermitUnitOfWork: ...
