"""Span export off the request path: a bounded queue that never blocks the caller and counts what it drops.

The SDK's BatchSpanProcessor drops silently when its queue is full; a gateway must be able to say how many spans a
slow or dead collector cost, so this processor keeps the same shape (bounded queue, timed flush, export on a
thread) and counts drops and failed exports.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

logger = logging.getLogger("tollgate.telemetry")


class CountingBatchSpanProcessor(SpanProcessor):
    def __init__(
        self,
        exporter: SpanExporter,
        *,
        max_queue_size: int = 4096,
        max_batch_size: int = 512,
        schedule_delay: float = 1.0,
        on_drop: Callable[[int], None] = lambda n: None,
        on_failure: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.exporter = exporter
        self.max_queue_size = max_queue_size
        self.max_batch_size = max_batch_size
        self.schedule_delay = schedule_delay
        self.on_drop = on_drop
        self.on_failure = on_failure
        self.dropped = 0
        self.failed = 0
        self._queue: collections.deque[ReadableSpan] = collections.deque()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._stopping = False
        self._in_flight = 0
        self._thread = threading.Thread(target=self._run, name="tollgate-span-export", daemon=True)
        self._thread.start()

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if self._stopping or not span.context.trace_flags.sampled:
            return
        if len(self._queue) >= self.max_queue_size:
            self.dropped += 1
            self.on_drop(1)
            return
        self._queue.append(span)
        if len(self._queue) >= self.max_batch_size:
            self._wake.set()

    def _export_batch(self) -> None:
        batch: list[ReadableSpan] = []
        while self._queue and len(batch) < self.max_batch_size:
            batch.append(self._queue.popleft())
        if not batch:
            return
        self._in_flight = len(batch)
        try:
            result = self.exporter.export(batch)
        except Exception:  # An exporter bug must not kill the export thread; count the batch as failed.
            logger.exception("span export raised")
            result = SpanExportResult.FAILURE
        finally:
            self._in_flight = 0
        if result is not SpanExportResult.SUCCESS:
            self.failed += len(batch)
            self.on_failure(len(batch))

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.schedule_delay)
            self._wake.clear()
            while self._queue and not self._stopping:
                self._export_batch()
            with self._flushed:
                self._flushed.notify_all()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._flushed:
            self._wake.set()
            return self._flushed.wait_for(lambda: not self._queue and not self._in_flight, timeout_millis / 1000)

    def shutdown(self) -> None:
        self.force_flush(5000)
        self._stopping = True
        self._wake.set()
        self._thread.join(5)
        self.exporter.shutdown()
