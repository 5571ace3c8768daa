"""Spans and metrics for tasks, graph steps and model calls.

Every method here swallows and logs its own failures: telemetry must never
break a model call. Parents are passed explicitly rather than read from the
ambient context, because LangChain callbacks run on other threads than the
code they describe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.metrics import MeterProvider, get_meter_provider
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider

from governor._forks import start_over_in_children
from governor.telemetry import attributes as attr
from governor.telemetry._content import content_free_exception

if TYPE_CHECKING:
    from governor._task import Task, TaskReport
    from governor.policies import Attribution

__all__ = [
    "DURATION_BUCKETS_S",
    "METRIC_ATTRIBUTES",
    "METRIC_MODELS_MAX",
    "METRIC_MODEL_OTHER",
    "Telemetry",
    "metric_attributes",
]

logger = logging.getLogger(__name__)

_SCOPE = "llm-governor"
AttrValue = str | bool | int | float | tuple[str, ...]

DURATION_BUCKETS_S = tuple(round(0.01 * 2**i, 2) for i in range(14))
"""The GenAI semantic conventions' advisory buckets, 0.01 s to 81.92 s."""

METRIC_ATTRIBUTES = frozenset(
    {
        attr.GEN_AI_OPERATION_NAME,
        attr.GEN_AI_PROVIDER_NAME,
        attr.GEN_AI_REQUEST_MODEL,
        attr.TEAM,
        attr.FEATURE,
        attr.ENVIRONMENT,
        attr.ORG,
        attr.ERROR_TYPE,
        "reason",
    }
)
"""The attributes a metric point may carry: each takes few values.

Users, sessions and free-form tags take a value per request or person; as
metric attributes they would make a time series each and soon pass the
SDK's cardinality limit (2,000 series a metric), after which every new
series, whatever its team, lands in one overflow series. Spans carry them.
"""

METRIC_MODELS_MAX = 100
"""How many distinct ``gen_ai.request.model`` values one governor's metrics name.

The model is as the caller sends it: a gateway that passes on client-chosen
names, or per-job fine-tune ids priced by ``Pricing(default=...)``, would
otherwise make a series per name. The first this many names a governor
records keep their name on its metrics; later new ones are counted as
:data:`METRIC_MODEL_OTHER`. Spans keep the model as requested.
"""

METRIC_MODEL_OTHER = "other"
"""The ``gen_ai.request.model`` metric value of the models past the cap."""


class Telemetry:
    """Creates the governor's spans and records its metrics.

    Args:
        tracer_provider: where spans go; defaults to the global provider, which
            is a no-op until the application (or ``configure_tracing``) sets one.
        meter_provider: where metrics go; defaults to the global provider.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer(_SCOPE)
        self._explicit = tracer_provider is not None
        self._global_set = False
        self._recheck_at = 0.0
        meter = (meter_provider or get_meter_provider()).get_meter(_SCOPE)
        self._cost = meter.create_counter(
            "governor.cost", unit="USD", description="Settled cost of model calls"
        )
        self._tokens = meter.create_counter(
            "governor.tokens", unit="{token}", description="Tokens of model calls"
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Duration of governed model calls",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self._refusals = meter.create_counter(
            "governor.refusals", unit="{call}", description="Calls refused by policy"
        )
        self._cache_hits = meter.create_counter(
            "governor.cache.hits", unit="{call}", description="Calls served by cache"
        )
        self._saved = meter.create_counter(
            "governor.cache.saved", unit="USD", description="Cost avoided by cache"
        )
        self._degraded = meter.create_counter(
            "governor.store.degraded",
            unit="{decision}",
            description="Decisions taken while the budget store was unreachable",
        )
        self._stops = meter.create_counter(
            "governor.task.stops",
            unit="{task}",
            description=(
                "Tasks that did not complete: stopped by policy, by an error "
                "(error:<ExceptionClass>), closed or cancelled early, or interrupted"
            ),
        )
        # The models named on metrics so far; read without the lock (a set
        # lookup), which only the first sight of a model takes.
        self._models: set[str] = set()
        self._models_full = False
        self._models_lock = threading.Lock()
        start_over_in_children(self)

    def _forget_parent(self) -> None:
        """In a forked child: a lock of its own (one a parent thread held at
        the fork would stay held for good)."""
        self._models_lock = threading.Lock()

    def metric_model(self, model: str) -> str:
        """``model`` as metrics name it: itself while the governor's metrics
        have named fewer than :data:`METRIC_MODELS_MAX` models (or this one
        already), else :data:`METRIC_MODEL_OTHER`."""
        if model in self._models or model == METRIC_MODEL_OTHER:
            return model
        if self._models_full:
            return METRIC_MODEL_OTHER
        return self._admit_model(model)

    def _admit_model(self, model: str) -> str:
        with self._models_lock:
            if model in self._models:
                return model
            if len(self._models) < METRIC_MODELS_MAX:
                self._models.add(model)
                return model
            first = not self._models_full
            self._models_full = True
        if first:
            logger.warning(
                "metrics have named %d distinct models (gen_ai.request.model), "
                "their limit; model %r and every later new model are counted "
                "as gen_ai.request.model=%r on governor.cost, governor.tokens, "
                "governor.refusals, the cache metrics and the call duration, "
                "so their time series stay below the SDK's cardinality limit. "
                "Spans still carry the full model name. If callers choose "
                "model names (a gateway, per-job fine-tunes), map them to a "
                "few names before the call to keep them apart on metrics",
                METRIC_MODELS_MAX,
                model,
                METRIC_MODEL_OTHER,
            )
        return METRIC_MODEL_OTHER

    def _bounded(self, labels: Mapping[str, AttrValue]) -> Mapping[str, AttrValue]:
        """The labels a metric point carries: bounded attributes only, and
        the model as :meth:`metric_model` names it (copied only to rename)."""
        bounded = (
            labels if labels.keys() <= METRIC_ATTRIBUTES else metric_attributes(labels)
        )
        model = bounded.get(attr.GEN_AI_REQUEST_MODEL)
        if not isinstance(model, str) or model in self._models:
            return bounded
        named = self.metric_model(model)
        return (
            bounded if named == model else {**bounded, attr.GEN_AI_REQUEST_MODEL: named}
        )

    def tracing(self) -> bool:
        """False while no tracer provider is set anywhere: spans are skipped.

        A global provider, once set, stays (OpenTelemetry sets it only once),
        so after it is found nothing is looked up again. Until then the
        public lookup, which reads the environment each time (over a
        microsecond), runs at most once a second; in between, OpenTelemetry's
        own slot for the global provider is read (tens of nanoseconds), so a
        provider set in code is used from the next call on. The slot is not
        public API: without it, a provider is found within a second.
        """
        if self._explicit or self._global_set:
            return True
        now = time.monotonic()
        if now < self._recheck_at and getattr(trace, "_TRACER_PROVIDER", None) is None:
            return False
        provider = trace.get_tracer_provider()
        self._global_set = not isinstance(provider, trace.ProxyTracerProvider)
        self._recheck_at = now + 1.0
        return self._global_set

    def start_task(self, task: Task) -> Span | None:
        """Start the span covering a whole task."""
        if not self.tracing():
            return None
        try:
            attributes: dict[str, AttrValue] = {
                attr.TASK_ID: task.id,
                attr.TASK_POLICY: task.policy.name,
            }
            attributes.update(attribution_attributes(task))
            return self._tracer.start_span(
                attr.SPAN_TASK, kind=SpanKind.INTERNAL, attributes=attributes
            )
        except Exception:
            logger.warning("could not start the task span", exc_info=True)
            return None

    def end_task(self, span: Span | None, report: TaskReport) -> None:
        """Count a stopped task; put the roll-ups on its span and end it."""
        if report.stop_reason is not None:
            self._count_stop(report.stop_reason)
        if span is None:
            return
        try:
            span.set_attributes(_task_rollups(report))
            if report.stop_reason not in _NOT_ERRORS:
                span.set_status(Status(StatusCode.ERROR, report.stop_reason))
            span.end()
        except Exception:
            logger.warning("could not end the task span", exc_info=True)

    def _count_stop(self, reason: str) -> None:
        try:
            self._stops.add(1, {"reason": reason})
        except Exception:
            logger.warning("could not count a task stop", exc_info=True)

    def start_span(
        self,
        name: str,
        parent: Span | None,
        attributes: Mapping[str, AttrValue],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> Span | None:
        """Start a child span of ``parent`` (a graph step or a model call)."""
        if not self.tracing():
            return None
        try:
            context = trace.set_span_in_context(parent) if parent else None
            return self._tracer.start_span(
                name, context=context, kind=kind, attributes=attributes
            )
        except Exception:
            logger.warning("could not start span %s", name, exc_info=True)
            return None

    def set_attributes(
        self, span: Span | None, attributes: Mapping[str, AttrValue]
    ) -> None:
        """Set attributes on a live span."""
        if span is None:
            return
        try:
            span.set_attributes(attributes)
        except Exception:
            logger.warning("could not set span attributes", exc_info=True)

    def timed_span(
        self,
        name: str,
        parent: Span | None,
        attributes: Mapping[str, AttrValue],
        *,
        start_ns: int | None,
        end_ns: int | None,
        error: str | None = None,
    ) -> None:
        """Record a span after the fact, with the times it covered; ``error``
        (a short description) marks it failed."""
        if not self.tracing():
            return
        try:
            context = trace.set_span_in_context(parent) if parent else None
            span = self._tracer.start_span(
                name, context=context, attributes=attributes, start_time=start_ns
            )
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
            span.end(end_time=end_ns)
        except Exception:
            logger.warning("could not record span %s", name, exc_info=True)

    def event(
        self, span: Span | None, name: str, attributes: Mapping[str, AttrValue]
    ) -> None:
        """Add a policy decision to a span as an event."""
        if span is None:
            return
        try:
            span.add_event(name, attributes=attributes)
        except Exception:
            logger.warning("could not add event %s", name, exc_info=True)

    def end_span(
        self,
        span: Span | None,
        attributes: Mapping[str, AttrValue],
        error: BaseException | None = None,
    ) -> None:
        """Set final attributes, mark errors, and end the span."""
        if span is None:
            return
        try:
            span.set_attributes(attributes)
            if error is not None:
                shown = public_type(error)
                span.set_status(Status(StatusCode.ERROR, shown.__name__))
                span.record_exception(error, _exception_attributes(error, shown))
            span.end()
        except Exception:
            logger.warning("could not end a span", exc_info=True)

    def record_call(
        self,
        labels: Mapping[str, AttrValue],
        *,
        cost_usd: float,
        input_tokens: int,
        output_tokens: int,
        duration_s: float,
        error: BaseException | None = None,
    ) -> None:
        """Record one settled call's metrics.

        Only the attributes in :data:`METRIC_ATTRIBUTES` are kept, the model
        as :meth:`metric_model` names it. Cost and
        tokens add no zero points: a failed call that was charged nothing
        adds to the duration only (with ``error.type``); one charged its hold
        counts that cost as any other call.
        """
        try:
            # The governor passes labels it bounded once per task: no copy.
            bounded = self._bounded(labels)
            if cost_usd:
                self._cost.add(cost_usd, bounded)
            self._add_tokens(input_tokens, bounded, "input")
            self._add_tokens(output_tokens, bounded, "output")
            if error is not None:
                bounded = {**bounded, attr.ERROR_TYPE: public_type(error).__qualname__}
            self._duration.record(duration_s, bounded)
        except Exception:
            logger.warning("could not record call metrics", exc_info=True)

    def _add_tokens(
        self, tokens: int, bounded: Mapping[str, AttrValue], kind: str
    ) -> None:
        if tokens:
            self._tokens.add(tokens, {**bounded, "gen_ai.token.type": kind})

    def record_refusal(self, labels: Mapping[str, AttrValue]) -> None:
        """Count a call refused by policy (bounded attributes only)."""
        try:
            self._refusals.add(1, self._bounded(labels))
        except Exception:
            logger.warning("could not record a refusal metric", exc_info=True)

    def record_degraded(self, event: str) -> None:
        """Count a decision taken while the budget store was down."""
        try:
            self._degraded.add(1, {"event": event})
        except Exception:
            logger.warning("could not record a degraded-store metric", exc_info=True)

    def record_cache_hit(self, labels: Mapping[str, AttrValue], saved: float) -> None:
        """Count a cache hit and the money it saved (bounded attributes only)."""
        try:
            bounded = self._bounded(labels)
            self._cache_hits.add(1, bounded)
            if saved:
                self._saved.add(saved, bounded)
        except Exception:
            logger.warning("could not record a cache metric", exc_info=True)


def metric_attributes(labels: Mapping[str, AttrValue]) -> dict[str, AttrValue]:
    """The labels a metric point may carry: those in :data:`METRIC_ATTRIBUTES`."""
    return {k: v for k, v in labels.items() if k in METRIC_ATTRIBUTES}


def attribution_attributes(task: Task) -> dict[str, AttrValue]:
    """Return the task's attribution as span attributes (computed once)."""
    if not task.span_attributes and (task.scope_values or task.attribution.tags):
        task.span_attributes = _attribution_attributes(task)
    return task.span_attributes


_SCOPE_ATTRIBUTES = {
    "team": attr.TEAM,
    "feature": attr.FEATURE,
    "environment": attr.ENVIRONMENT,
    "user": attr.USER,
    "session": attr.SESSION,
    "org": attr.ORG,
}


def _attribution_attributes(task: Task) -> dict[str, AttrValue]:
    return _attributes(task.scope_values, task.attribution)


def attributes_of(attribution: Attribution) -> dict[str, AttrValue]:
    """An attribution as span attributes (a call's own, when it names one)."""
    return _attributes(attribution.scope_values(), attribution)


def _attributes(
    values: Mapping[str, str], attribution: Attribution
) -> dict[str, AttrValue]:
    out: dict[str, AttrValue] = {_SCOPE_ATTRIBUTES[k]: v for k, v in values.items()}
    out.update({attr.TAG_PREFIX + k: v for k, v in attribution.tags.items()})
    return out


def _task_rollups(report: TaskReport) -> dict[str, AttrValue]:
    rollups: dict[str, AttrValue] = {
        attr.TASK_COST_USD: float(report.cost_usd),
        attr.TASK_TOKENS: report.tokens,
        attr.TASK_CALLS: report.calls,
        attr.TASK_STOP_REASON: report.stop_reason or "completed",
        attr.TASK_PEAK_INFLIGHT: report.peak_inflight,
    }
    if report.budget_left_usd is not None:
        rollups[attr.TASK_BUDGET_LEFT_USD] = float(report.budget_left_usd)
    return rollups


# Stop reasons that are no error: a run paused for a human (interrupt()), a
# reader that stopped reading early. Their task spans keep an unset status,
# so that error-rate alerts count failures only.
_NOT_ERRORS = frozenset({None, "interrupted", "closed"})


def public_type(error: BaseException) -> type[BaseException]:
    """The error's class as telemetry shows it: the first public one it is.

    The governor ends calls with private exceptions of its own (a LangGraph
    call cut off as its run ends is a ``CancelledError``); dashboards group
    by the public class, the same for every adapter.
    """
    for cls in type(error).__mro__:
        if not (cls.__name__.startswith("_") and _is_governors(cls)):
            return cls
    return type(error)


def _is_governors(cls: type) -> bool:
    """Whether a class is the governor's own (a user's private error keeps
    its name: it is the user's to show)."""
    return cls.__module__ == "governor" or cls.__module__.startswith("governor.")


def _exception_attributes(
    error: BaseException, shown: type[BaseException]
) -> dict[str, str] | None:
    """The exception event's attributes, naming ``shown`` as its type."""
    attributes = content_free_exception(error)
    if shown is type(error):
        return attributes
    module, name = shown.__module__, shown.__qualname__
    named = name if module == "builtins" else f"{module}.{name}"
    return {**(attributes or {}), "exception.type": named}
