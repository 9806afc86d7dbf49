"""Records out: :class:`BatchSender` builds producer batches per (topic, partition).

The worker, ``trail produce`` and the benchmark write through it: records go into one
producer batch per partition and are sent together, with no round trip per record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any


class BatchSender:
    """Accumulates records in one producer batch per (topic, partition) and sends them all on
    :meth:`flush`, which returns once the broker acknowledged every one of them.

    Records of one partition are sent in the order they were added.
    """

    def __init__(self, producer: Any) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._queue: list[tuple[str, int, Any]] = []
        self.records = 0

    @property
    def pending(self) -> int:
        """Records added since the last :meth:`send` (or :meth:`flush`)."""
        return self.records

    def add(
        self,
        topic: str,
        partition: int,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Add one record to ``topic``'s ``partition`` (sent by the next :meth:`send`).

        Raises
        ------
        ValueError
            If the record alone does not fit in an empty producer batch.
        """
        slot = (topic, partition)
        batch = self._open.get(slot)
        if batch is None:
            batch = self._new_batch(slot)
        if batch.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
            batch = self._new_batch(slot)
            if batch.append(key=key, value=value, timestamp=None, headers=list(headers)) is None:
                size = len(value or b"") + len(key or b"")
                raise ValueError(f"a record of {size} bytes does not fit in a producer batch")
        self.records += 1

    def _new_batch(self, slot: tuple[str, int]) -> Any:
        batch = self._producer.create_batch()
        self._open[slot] = batch
        self._queue.append((slot[0], slot[1], batch))
        return batch

    async def send(self) -> list[asyncio.Future[Any]]:
        """Hand everything added so far to the producer; returns the delivery futures (done
        when the broker acknowledged each batch) without waiting for them."""
        if not self._queue:
            return []
        queue, self._queue, self._open = self._queue, [], {}
        self.records = 0
        futures = []
        for topic, partition, batch in queue:
            if batch.record_count() == 0:
                continue
            batch.close()
            futures.append(await self._producer.send_batch(batch, topic, partition=partition))
        return futures

    async def flush(self) -> int:
        """Send everything added so far and wait for the broker's acknowledgements."""
        sent = self.records
        futures = await self.send()
        if futures:
            await asyncio.gather(*futures)
        return sent
