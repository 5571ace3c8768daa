"""Ready-made policies for common deployments, to use as they are or to merge.

Each pack is a function that returns a :class:`~governor.policies.Policy`;
its keyword arguments carry their units in their names and have defaults a
first deployment can live with. A pack is a starting point: lay your own
settings over it with :meth:`Policy.merged`, which replaces a pack's budget
for the same scope, key and period and keeps the others. Each pack sets
explicitly every setting its description names (``on_cap`` included, even
where it is the default), so a pack merged over another brings its own
behaviour rather than keeping the one below::

    from governor.policies import Budget, Policy, packs

    policy = packs.production(team_monthly_usd="5000").merged(
        Policy(budgets=[Budget(scope="team", key="search", max_usd="20000",
                               period="month")])
    )

The command line loads them as ``pack:NAME`` wherever it takes a policy
(``governor replay --policy pack:production``), with their defaults, and
``governor policy show pack:NAME`` prints one.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from decimal import Decimal

from pydantic import ValidationError

from governor._errors import ConfigError, PolicyError
from governor.policies._cache import Cache
from governor.policies._cascade import Cascade, NonEmptyCheck, NotRefusalCheck, Tier
from governor.policies._loops import Loops
from governor.policies._model import Attribution, Budget, Fanout, Policy

__all__ = [
    "PACKS",
    "batch",
    "by_name",
    "cost_saver",
    "customer_facing",
    "production",
    "starter",
]

Money = Decimal | int | str
"""Dollars as Decimal, int or a decimal string (a float is read by its
shortest decimal form, as Budget reads it)."""

_DOLLARS = (
    "US dollars as a Decimal, int or decimal string, from 0 to about 9 "
    "million with at most 9 decimal places, e.g. '0.50'"
)
_CALLS = "a positive whole number of calls"
_ZONE = "an IANA time zone name such as 'UTC' or 'Europe/Paris'"
_NAME = (
    "a non-empty name without '#', control or invisible characters or spaces around it"
)
_MODEL = "a model name as it is called, without spaces around it, e.g. 'gpt-4o-mini'"
_NO_TASK_USD = "sets no dollar limit on the pack's task budget"


@contextlib.contextmanager
def _argument(pack: str, name: str, value: object, accepted: str) -> Iterator[None]:
    """Say a PolicyError raised inside in terms of the pack's own argument.

    The part built from the argument (a Budget's max_usd, a Fanout's
    scope_caps) is the pack's business; the caller passed ``name``.
    """
    try:
        yield
    except PolicyError as exc:
        raise PolicyError(
            f"packs.{pack}(): {name}={value!r} is not valid: {_reason(exc)}; "
            f"{name} takes {accepted}"
        ) from exc


def _given(
    pack: str,
    name: str,
    value: object,
    accepted: str,
    unset: str,
    *,
    text: bool = False,
) -> None:
    """Refuse None for a pack's argument, and anything but text for a text one.

    The parts read None as "not set", so None would build a part that limits
    or names nothing (a budget for no feature, a fan-out with no cap), or be
    refused in the part's own words; ``unset`` says what None would leave
    out. A text argument given bytes or a number is refused too, rather than
    read as text by the part.
    """
    if value is None:
        reason = f"None {unset}"
    elif text and not isinstance(value, str):
        reason = f"it is of type {type(value).__name__}, not text"
    else:
        return
    default = inspect.signature(PACKS[pack]).parameters[name].default
    raise PolicyError(
        f"packs.{pack}(): {name}={value!r} is not valid: {reason}; {name} "
        f"takes {accepted}, or leave it out for its default {default!r}"
    )


def _reason(exc: PolicyError) -> str:
    """What was wrong, without the part and field names of the message."""
    cause = exc.__cause__
    if not isinstance(cause, ValidationError):
        return str(exc)
    reasons = (str(e["msg"]).removeprefix("Value error, ") for e in cause.errors())
    return "; ".join(dict.fromkeys(reasons))


def starter(*, task_usd: Money = "0.50") -> Policy:
    """A first deployment: every task capped in dollars and against runaways.

    Each task (one graph invocation or governed call) may spend ``task_usd``,
    make 50 model calls and run 10 minutes; the loop rules run with their
    defaults, and at most 8 model calls of a task are in flight at once.
    """
    _given("starter", "task_usd", task_usd, _DOLLARS, _NO_TASK_USD)
    with _argument("starter", "task_usd", task_usd, _DOLLARS):
        task = Budget(max_usd=task_usd)
    return Policy(
        name="starter",
        budgets=[task],
        loops=Loops(max_model_calls=50, max_wall_s=600),
        fanout=Fanout(max_inflight_calls=8, on_cap="wait"),
    )


def production(
    *,
    task_usd: Money = "1",
    team_monthly_usd: Money = "1000",
    team_inflight_calls: int = 20,
    environment: str = "prod",
    timezone: str = "UTC",
) -> Policy:
    """A shared service: per-task and per-team monthly budgets, team caps.

    Every team gets ``team_monthly_usd`` per calendar month in ``timezone``
    (a task with no team is held only by its task budget), at most
    ``team_inflight_calls`` calls in flight across every worker sharing the
    ledger, and warnings at 80% and 95%. Tasks may make 100 model calls and
    run 30 minutes. The store failing closed refuses calls rather than
    spending blind. Set the team per task or in call metadata.
    """
    pack = "production"
    _given(pack, "task_usd", task_usd, _DOLLARS, _NO_TASK_USD)
    _given(
        pack,
        "team_monthly_usd",
        team_monthly_usd,
        _DOLLARS,
        "sets no dollar limit on the pack's monthly team budget",
    )
    _given(
        pack,
        "team_inflight_calls",
        team_inflight_calls,
        _CALLS,
        "sets no cap on a team's calls in flight",
    )
    _given(
        pack,
        "environment",
        environment,
        _NAME,
        "names no environment, so the pack's tasks would be charged to none",
        text=True,
    )
    _given(pack, "timezone", timezone, _ZONE, "names no time zone", text=True)
    with _argument(pack, "task_usd", task_usd, _DOLLARS):
        task = Budget(max_usd=task_usd)
    with _argument(pack, "team_monthly_usd", team_monthly_usd, _DOLLARS):
        team = Budget(scope="team", max_usd=team_monthly_usd, period="month")
    with _argument(pack, "timezone", timezone, _ZONE):
        team = team.model_copy(update={"timezone": timezone})
    with _argument(pack, "environment", environment, _NAME):
        attribution = Attribution(environment=environment)
    with _argument(pack, "team_inflight_calls", team_inflight_calls, _CALLS):
        fanout = Fanout(
            max_inflight_calls=16,
            scope_caps={"team": team_inflight_calls},
            on_cap="wait",
        )
    return Policy(
        name=pack,
        budgets=[task, team],
        attribution=attribution,
        loops=Loops(max_model_calls=100, max_wall_s=1800),
        fanout=fanout,
        failure_mode="closed",
    )


def customer_facing(
    *,
    user_daily_usd: Money = "0.50",
    session_usd: Money = "0.20",
    task_usd: Money = "0.05",
    timezone: str = "UTC",
) -> Policy:
    """End users drive the spend: cap each user per day and each session.

    A chat request is a task of ``task_usd``; a session (LangGraph's
    ``thread_id``) may spend ``session_usd`` in all and a user
    ``user_daily_usd`` per calendar day. Calls past a fan-out cap are refused
    at once rather than queued (a user is waiting), and tasks are short:
    20 model calls, 2 minutes. A user's exact repeats are served from cache;
    users never share cached answers.
    """
    pack = "customer_facing"
    _given(pack, "task_usd", task_usd, _DOLLARS, _NO_TASK_USD)
    _given(
        pack,
        "session_usd",
        session_usd,
        _DOLLARS,
        "sets no dollar limit on the pack's session budget",
    )
    _given(
        pack,
        "user_daily_usd",
        user_daily_usd,
        _DOLLARS,
        "sets no dollar limit on the pack's daily user budget",
    )
    _given(pack, "timezone", timezone, _ZONE, "names no time zone", text=True)
    with _argument(pack, "task_usd", task_usd, _DOLLARS):
        task = Budget(max_usd=task_usd)
    with _argument(pack, "session_usd", session_usd, _DOLLARS):
        session = Budget(scope="session", max_usd=session_usd)
    with _argument(pack, "user_daily_usd", user_daily_usd, _DOLLARS):
        user = Budget(scope="user", max_usd=user_daily_usd, period="day")
    with _argument(pack, "timezone", timezone, _ZONE):
        user = user.model_copy(update={"timezone": timezone})
    return Policy(
        name=pack,
        budgets=[task, session, user],
        loops=Loops(max_model_calls=20, max_wall_s=120),
        fanout=Fanout(max_inflight_calls=4, on_cap="refuse"),
        cache=Cache(exact=True, semantic=False, partition_by=("org", "team", "user")),
    )


def batch(
    *,
    job_usd: Money = "20",
    daily_usd: Money = "200",
    inflight_calls: int = 32,
    feature: str = "batch",
) -> Policy:
    """Offline jobs: one job is one task with a large budget, queued fan-out.

    A job may spend ``job_usd`` and run 6 hours; every job under ``feature``
    together may spend ``daily_usd`` per UTC day. Calls past
    ``inflight_calls`` wait for a slot (up to 10 minutes) instead of failing,
    and repeats are served from cache.
    """
    pack = "batch"
    _given(
        pack,
        "job_usd",
        job_usd,
        _DOLLARS,
        "sets no dollar limit on the pack's job budget",
    )
    _given(
        pack,
        "daily_usd",
        daily_usd,
        _DOLLARS,
        "sets no dollar limit on the pack's daily feature budget",
    )
    _given(
        pack,
        "inflight_calls",
        inflight_calls,
        _CALLS,
        "sets no cap on a job's calls in flight",
    )
    _given(
        pack,
        "feature",
        feature,
        _NAME,
        "names no feature, so the pack's daily budget (scope 'feature') "
        "would apply to no job",
        text=True,
    )
    with _argument(pack, "job_usd", job_usd, _DOLLARS):
        job = Budget(max_usd=job_usd)
    with _argument(pack, "daily_usd", daily_usd, _DOLLARS):
        daily = Budget(scope="feature", max_usd=daily_usd, period="day")
    with _argument(pack, "feature", feature, _NAME):
        attribution = Attribution(feature=feature)
    with _argument(pack, "inflight_calls", inflight_calls, _CALLS):
        fanout = Fanout(
            max_inflight_calls=inflight_calls, on_cap="wait", wait_timeout_s=600
        )
    return Policy(
        name=pack,
        budgets=[job, daily],
        attribution=attribution,
        loops=Loops(max_model_calls=5000, max_wall_s=6 * 3600),
        fanout=fanout,
        cache=Cache(exact=True, semantic=True, partition_by=("org", "team")),
    )


def cost_saver(
    *,
    cheap_model: str = "gpt-4o-mini",
    premium_model: str = "gpt-4o",
    task_usd: Money = "0.25",
) -> Policy:
    """Answer with the cheap model when it will do; cache repeats and paraphrases.

    ``cascade()`` asks ``cheap_model`` first and escalates to
    ``premium_model`` when the answer is empty or a refusal (add checks of
    your own with :meth:`Policy.merged`); both layers of the response cache
    are on, with its safety gate. Each task may spend ``task_usd``.
    """
    pack = "cost_saver"
    _given(pack, "task_usd", task_usd, _DOLLARS, _NO_TASK_USD)
    for name, model in (("cheap_model", cheap_model), ("premium_model", premium_model)):
        _given(pack, name, model, _MODEL, "names no model", text=True)
    with _argument(pack, "task_usd", task_usd, _DOLLARS):
        task = Budget(max_usd=task_usd)
    with _argument(pack, "cheap_model", cheap_model, _MODEL):
        cheap = Tier(name="cheap", model=cheap_model)
    with _argument(pack, "premium_model", premium_model, _MODEL):
        premium = Tier(name="premium", model=premium_model)
    if premium_model == cheap_model:
        raise PolicyError(
            f"packs.cost_saver(): premium_model={premium_model!r} is not valid: "
            "it is cheap_model too, so the premium tier would repeat the cheap "
            "tier's answer at the same price and fail the same way; "
            "premium_model takes a model dearer than cheap_model (by default "
            "'gpt-4o' over 'gpt-4o-mini')"
        )
    return Policy(
        name=pack,
        budgets=[task],
        cascade=Cascade(
            tiers=[cheap, premium],
            checks=[NonEmptyCheck(), NotRefusalCheck()],
        ),
        cache=Cache(exact=True, semantic=True, safety_gate=True),
        loops=Loops(max_model_calls=50),
    )


PACKS: dict[str, Callable[[], Policy]] = {
    "starter": starter,
    "production": production,
    "customer_facing": customer_facing,
    "batch": batch,
    "cost_saver": cost_saver,
}
"""Every pack by name, each callable with its defaults."""


def by_name(name: str) -> Policy:
    """The pack called ``name``, built with its defaults.

    Raises:
        ConfigError: no pack has that name.
    """
    pack = PACKS.get(name)
    if pack is None:
        raise ConfigError(
            f"no policy pack named {name!r}; the packs are {', '.join(PACKS)}"
        )
    return pack()
