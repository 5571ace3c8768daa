"""Span and metric attribute names, in one place.

Model-call spans follow the OpenTelemetry GenAI semantic conventions
(``gen_ai.*``). The conventions have no cost attribute yet, so cost goes on
``gen_ai.usage.cost.*`` (the open proposal) plus the two aliases existing
backends read. Task-level roll-ups use ``governor.task.*`` names so that no
backend adds a task's total to its calls' costs and counts twice.
"""

from __future__ import annotations

# GenAI semantic conventions (names as in semconv 1.3x, incubating).
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_CACHE_CREATION_INPUT_TOKENS = "gen_ai.usage.cache_creation.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
ERROR_TYPE = "error.type"

# Cost: the open proposal, and the aliases backends read today.
GEN_AI_USAGE_COST_AMOUNT = "gen_ai.usage.cost.amount"
GEN_AI_USAGE_COST_CURRENCY = "gen_ai.usage.cost.currency"
GEN_AI_USAGE_COST_SOURCE = "gen_ai.usage.cost.source"
LLM_COST_TOTAL = "llm.cost.total"
GEN_AI_USAGE_COST = "gen_ai.usage.cost"

# The governor's own names.
TASK_ID = "governor.task.id"
TASK_POLICY = "governor.task.policy"
TASK_COST_USD = "governor.task.cost_usd"
TASK_TOKENS = "governor.task.tokens"
TASK_CALLS = "governor.task.calls"
TASK_BUDGET_LEFT_USD = "governor.task.budget_left_usd"
TASK_STOP_REASON = "governor.task.stop_reason"
TASK_PEAK_INFLIGHT = "governor.task.peak_inflight"
FANOUT_WAIT_S = "governor.fanout.wait_s"
CALL_ID = "governor.call.id"
CALL_RESERVED_USD = "governor.call.reserved_usd"
CALL_COST_ESTIMATED = "governor.call.cost_estimated"
CALL_PRICE_SOURCE = "governor.call.price_source"
CACHE_HIT = "governor.cache.hit"
CACHE_SAVED_USD = "governor.cache.saved_usd"
CACHE_LAYER = "governor.cache.layer"
CACHE_SIMILARITY = "governor.cache.similarity"
NODE_NAME = "governor.node.name"
NODE_STEP = "governor.node.step"
TEAM = "governor.team"
FEATURE = "governor.feature"
ENVIRONMENT = "governor.environment"
USER = "governor.user"
SESSION = "governor.session"
ORG = "governor.org"
TAG_PREFIX = "governor.tag."
DEGRADED = "governor.degraded"
NODE_PAUSED = "governor.node.paused"
CASCADE_TIER = "governor.cascade.tier"
CASCADE_OUTCOME = "governor.cascade.outcome"
CASCADE_REASON = "governor.cascade.reason"
CASCADE_SENT = "governor.cascade.sent"
CASCADE_CHECKS = "governor.cascade.checks"
CASCADE_ERROR_KIND = "governor.cascade.error_kind"
CASCADE_ATTEMPT_COST_USD = "governor.cascade.attempt_cost_usd"
CASCADE_FINAL_TIER = "governor.cascade.final_tier"
CASCADE_ACCEPTED = "governor.cascade.accepted"
CASCADE_SAVED_USD = "governor.cascade.saved_vs_premium_usd"

# Span event names: the ledger's steps and the policy decisions.
EVENT_RESERVED = "governor.reserved"
EVENT_REFUSED = "governor.refused"
EVENT_SETTLED = "governor.settled"
EVENT_RELEASED = "governor.released"
EVENT_WARNING = "governor.budget_warning"

# Span names.
SPAN_TASK = "governor.task"
SPAN_NODE_PREFIX = "governor.node "

CURRENCY_USD = "USD"
