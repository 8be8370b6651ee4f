"""Tracing sampled requests with OpenTelemetry spans, per Triton's trace settings. No Ray here.

The entry point (the data plane in an Ingress replica) samples a request by its model's settings
(``trace_rate``: one of every N; none at level OFF or a ``trace_count`` of 0) and opens its root span; its
W3C trace context travels with the handle call (the ``trace`` argument of ``infer`` / ``infer_versioned`` /
``infer_stream``), so the model replica's spans (the request in the replica, its queue wait in the batcher,
and the backend's input, infer and output stages) and an ensemble's (the ensemble, a span per step, and
each step model's own spans below it) join the same trace. A request that is not sampled carries no
context and costs one counter.

Each replica process has one ``Tracer``: an OpenTelemetry ``TracerProvider`` whose batch processor hands
finished spans, at most every 0.5 s, to the application's statistics collector, which writes them to the
trace file (``cluster/protocol/trace_output.py``). Span times are the replica's own clock readings
(``perf_counter_ns`` turned into epoch nanoseconds), so the stages of one replica are exactly ordered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace as otel
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from deployments.observability.trace_settings import TraceSettings

logger = logging.getLogger(__name__)

#: How often a process hands its finished spans to the collector.
EXPORT_DELAY_MS = 500
_PROPAGATOR = TraceContextTextMapPropagator()


def epoch_ns(perf_ns: int) -> int:
    """A ``perf_counter_ns`` reading as nanoseconds since the epoch (the spans' clock)."""
    return perf_ns + (time.time_ns() - time.perf_counter_ns())


class Tracer:
    """One replica process's sampling, spans and span export (``tracer_for`` makes it)."""

    def __init__(self, exporter: SpanExporter):
        self.provider = TracerProvider()
        # A queue for a few seconds of every request traced (6 spans each, ~1,000 requests/s), so that spans
        # are not dropped at trace_rate 1 (the SDK's default holds 2,048).
        self.provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=32_768,
                                                            schedule_delay_millis=EXPORT_DELAY_MS))
        self._tracer = self.provider.get_tracer("ric")
        self.settings = TraceSettings()
        self._seen: dict[str, int] = {}

    def sample(self, model: str) -> bool:
        """Whether this request for ``model`` is traced: the first of every ``trace_rate``."""
        if not self.settings.traced(model):
            return False
        seen = self._seen.get(model, 0)
        self._seen[model] = seen + 1
        return seen % int(self.settings.of(model)["trace_rate"]) == 0

    def span(self, name: str, parent: dict[str, str] | otel.Span | None, start_ns: int | None = None,
             **attributes: Any) -> otel.Span:
        """Start a span under ``parent`` (a carried context, a span of this process, or None for a root);
        ``start_ns`` in epoch nanoseconds (default now)."""
        if isinstance(parent, dict):
            context = _PROPAGATOR.extract(parent)
        elif parent is not None:
            context = otel.set_span_in_context(parent)
        else:
            context = None
        return self._tracer.start_span(name, context=context, start_time=start_ns,
                                       attributes={k: v for k, v in attributes.items() if v is not None})

    @staticmethod
    def carried(span: otel.Span) -> dict[str, str]:
        """The span's context as it travels with a handle call."""
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=otel.set_span_in_context(span))
        return carrier

    def stages(self, parent: dict[str, str] | None, model: str, version: int, stamps: dict[str, int]) -> None:
        """The spans of one request in a model replica, from its perf_counter timestamps: the request, and
        below it the queue wait and the backend's input, infer and output stages. Triton's TIMESTAMPS are
        the request span's events."""
        if parent is None or not stamps.get("done"):
            return
        offset = epoch_ns(0)  # once: an offset read per stamp moves each by its own jitter, which reordered
        at = {name: ns + offset for name, ns in stamps.items()}  # stages microseconds apart
        request = self.span(f"model {model}", parent, at["arrived"], model=model, version=version)
        for name, key in (("REQUEST_START", "arrived"), ("QUEUE_START", "queued"), ("COMPUTE_START", "started"),
                          ("COMPUTE_INPUT_END", "started"), ("COMPUTE_OUTPUT_START", "computed"),
                          ("COMPUTE_END", "done"), ("REQUEST_END", "done")):
            request.add_event(name, timestamp=at[key])
        for name, start, end in (("compute_input", "arrived", "queued"), ("queue", "queued", "started"),
                                 ("compute_infer", "started", "computed"), ("compute_output", "computed", "done")):
            self.span(name, request, at[start], model=model).end(end_time=at[end])
        request.end(end_time=at["done"])


class CollectorExporter(SpanExporter):
    """Hands finished spans, as plain rows, to the statistics collector (``spans``), through the replica's
    event loop (Serve's handles are called from there)."""

    def __init__(self, collector: Any, loop: asyncio.AbstractEventLoop):
        self._collector, self._loop = collector, loop

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        rows = [span_row(span) for span in spans]
        try:
            asyncio.run_coroutine_threadsafe(self._send(rows), self._loop).result(timeout=10)
        except Exception as exc:  # the collector restarting: these spans are lost, serving goes on
            logger.warning("sending %d spans to the statistics collector failed: %r", len(rows), exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    async def _send(self, rows: list[dict[str, Any]]) -> None:
        await self._collector.spans.remote(rows)


def span_row(span: ReadableSpan) -> dict[str, Any]:
    """One span as a JSON object: ids in hex, times in epoch nanoseconds."""
    return {
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "name": span.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "attributes": dict(span.attributes or {}),
        "events": [{"name": event.name, "ns": event.timestamp} for event in span.events],
    }


_tracers: dict[int, Tracer] = {}  # one per replica process (its event loop)


def tracer_for(collector: Any) -> Tracer | None:
    """This process's Tracer, sending spans to ``collector`` (None: no tracing). Call it on the replica's
    event loop."""
    if collector is None:
        return None
    loop = asyncio.get_running_loop()
    if id(loop) not in _tracers:
        _tracers[id(loop)] = Tracer(CollectorExporter(collector, loop))
    return _tracers[id(loop)]
