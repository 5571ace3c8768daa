"""Ready-made policies for common deployments, to use as they are or to merge.

Each pack is a function that returns a :class:`~governor.policies.Policy`;
its keyword arguments carry their units in their names and have defaults a
first deployment can live with. A pack is a starting point: lay your own
settings over it with :meth:`Policy.merged`, which replaces a pack's budget
for the same scope, key and period and keeps the others::

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

from collections.abc import Callable
from decimal import Decimal

from governor._errors import ConfigError
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


def starter(*, task_usd: Money = "0.50") -> Policy:
    """A first deployment: every task capped in dollars and against runaways.

    Each task (one graph invocation or governed call) may spend ``task_usd``,
    make 50 model calls and run 10 minutes; the loop rules run with their
    defaults, and at most 8 model calls of a task are in flight at once.
    """
    return Policy(
        name="starter",
        budgets=[Budget(max_usd=task_usd)],
        loops=Loops(max_model_calls=50, max_wall_s=600),
        fanout=Fanout(max_inflight_calls=8),
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
    return Policy(
        name="production",
        budgets=[
            Budget(max_usd=task_usd),
            Budget(
                scope="team",
                max_usd=team_monthly_usd,
                period="month",
                timezone=timezone,
            ),
        ],
        attribution=Attribution(environment=environment),
        loops=Loops(max_model_calls=100, max_wall_s=1800),
        fanout=Fanout(max_inflight_calls=16, scope_caps={"team": team_inflight_calls}),
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
    return Policy(
        name="customer_facing",
        budgets=[
            Budget(max_usd=task_usd),
            Budget(scope="session", max_usd=session_usd),
            Budget(
                scope="user", max_usd=user_daily_usd, period="day", timezone=timezone
            ),
        ],
        loops=Loops(max_model_calls=20, max_wall_s=120),
        fanout=Fanout(max_inflight_calls=4, on_cap="refuse"),
        cache=Cache(semantic=False, partition_by=("org", "team", "user")),
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
    return Policy(
        name="batch",
        budgets=[
            Budget(max_usd=job_usd),
            Budget(scope="feature", max_usd=daily_usd, period="day"),
        ],
        attribution=Attribution(feature=feature),
        loops=Loops(max_model_calls=5000, max_wall_s=6 * 3600),
        fanout=Fanout(max_inflight_calls=inflight_calls, wait_timeout_s=600),
        cache=Cache(),
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
    return Policy(
        name="cost_saver",
        budgets=[Budget(max_usd=task_usd)],
        cascade=Cascade(
            tiers=[
                Tier(name="cheap", model=cheap_model),
                Tier(name="premium", model=premium_model),
            ],
            checks=[NonEmptyCheck(), NotRefusalCheck()],
        ),
        cache=Cache(),
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
