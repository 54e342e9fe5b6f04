"""The repayments topic's offsets on the broker, for the repayment gate
(notifier.app.repayment_gate): log ends of every partition, the notifier group's commits."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from collections_kit.kafka import client_kwargs
from collections_kit.settings import ServiceSettings

# Partitions are added rarely (and only ever added): their list is asked for this often.
PARTITIONS_EVERY_S = 30.0


class KafkaRepaymentLog:
    """Reads offsets only: its consumer joins no group and fetches no record."""

    def __init__(self, settings: ServiceSettings, topic: str) -> None:
        self._settings = settings
        self._topic = settings.topic_prefix + topic
        self._group = settings.group_id()
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None
        self._partitions: list[int] = []
        self._partitions_at = 0.0

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        # Made on first use, in the running loop, and again after a failed start (the
        # broker may be down when the service starts).
        if self._admin is None or self._offsets is None:
            kwargs = client_kwargs(self._settings)
            client_id = f"{self._group}-repayment-gate"
            admin = AIOKafkaAdminClient(**kwargs, client_id=client_id)
            offsets = AIOKafkaConsumer(
                **kwargs, client_id=client_id, group_id=None, enable_auto_commit=False
            )
            try:
                await admin.start()
                await offsets.start()
            except BaseException:
                await offsets.stop()
                await admin.close()
                raise
            self._admin, self._offsets = admin, offsets
        return self._admin, self._offsets

    async def close(self) -> None:
        admin, offsets = self._admin, self._offsets
        self._admin = self._offsets = None
        try:
            if offsets is not None:
                await offsets.stop()
        finally:
            if admin is not None:
                await admin.close()

    async def ends(self) -> dict[int, int]:
        async with self._fresh_after_failure():
            return await self._ends()

    async def consumed(self, ends: Mapping[int, int]) -> dict[int, int]:
        async with self._fresh_after_failure():
            return await self._consumed(ends)

    @contextlib.asynccontextmanager
    async def _fresh_after_failure(self) -> AsyncIterator[None]:
        # Whatever failed (the broker restarted, a request timed out), the next look starts
        # from new clients rather than trust ones in an unknown state.
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                await self.close()
            raise

    async def _ends(self) -> dict[int, int]:
        admin, offsets = await self._clients()
        if not self._partitions or time.monotonic() - self._partitions_at > PARTITIONS_EVERY_S:
            described = await admin.describe_topics([self._topic])
            self._partitions = sorted(
                p["partition"]
                for t in described
                if t["topic"] == self._topic and not t["error_code"]
                for p in t["partitions"]
            )
            self._partitions_at = time.monotonic()
        ends = await offsets.end_offsets([TopicPartition(self._topic, p) for p in self._partitions])
        return {tp.partition: end for tp, end in ends.items()}

    async def _consumed(self, ends: Mapping[int, int]) -> dict[int, int]:
        admin, offsets = await self._clients()
        partitions = [TopicPartition(self._topic, p) for p in ends]
        committed = await admin.list_consumer_group_offsets(self._group, partitions=partitions)
        at = {
            tp.partition: max(meta.offset, 0)
            for tp, meta in committed.items()
            if tp.topic == self._topic
        }
        behind = [TopicPartition(self._topic, p) for p, end in ends.items() if at.get(p, 0) < end]
        if behind:  # rarely needed: only where the group has not reached the end
            for tp, start in (await offsets.beginning_offsets(behind)).items():
                at[tp.partition] = max(at.get(tp.partition, 0), start)
        return at
