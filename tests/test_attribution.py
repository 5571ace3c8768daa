"""Ambient attribution reaches every task, through asyncio, threads and graphs."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, TypedDict

import pytest
from langgraph.graph import END, START, StateGraph
from opentelemetry import baggage

from conftest import SpanCapture
from governor import (
    Attribution,
    Budget,
    BudgetExceeded,
    Governor,
    Policy,
    PolicyError,
    attribute,
    current_attribution,
    govern,
)
from governor.adapters.litellm import GovernedLiteLLM
from governor.telemetry import attributes as attr

MESSAGES = [{"role": "user", "content": "Say hi."}]


def call(gov: Governor, **extra: Any) -> None:
    GovernedLiteLLM(gov).completion(
        model="gpt-4o-mini",
        messages=MESSAGES,
        mock_response="hi",
        max_tokens=20,
        **extra,
    )


def test_context_manager_charges_tasks_opened_inside(capture: SpanCapture) -> None:
    """Tasks opened inside attribute() carry its team and feature."""
    gov = Governor(tracer_provider=capture.provider)
    with attribute(team="search", feature="answers"), gov.task() as task:
        call(gov)
    assert task.report().attribution == {"team": "search", "feature": "answers"}
    (span,) = capture.calls()
    assert (span.attributes[attr.TEAM], span.attributes[attr.FEATURE]) == (
        "search",
        "answers",
    )


def test_blocks_nest_and_inner_values_win() -> None:
    """An inner block overrides the outer team and keeps the outer feature."""
    with attribute(team="a", feature="f", tags={"x": "1"}):
        with attribute(team="b", tags={"y": "2"}) as inner:
            assert inner == Attribution(
                team="b", feature="f", tags={"x": "1", "y": "2"}
            )
        assert current_attribution() == Attribution(
            team="a", feature="f", tags={"x": "1"}
        )
    assert current_attribution() is None


def test_policy_attribution_is_the_base_and_explicit_values_win() -> None:
    """Policy values, then ambient values, then the task's own, in that order."""
    policy = Policy(attribution=Attribution(environment="prod", team="core"))
    gov = Governor(policy)
    with attribute(team="search"), gov.task(feature="faq") as task:
        pass
    assert task.report().attribution == {
        "environment": "prod",
        "team": "search",
        "feature": "faq",
    }


def test_a_sub_task_s_own_policy_attribution_wins_over_its_parent_s() -> None:
    """A sub-task opened with a policy naming a team is charged to that team
    (its budget too) and keeps the parent's other values."""
    gov = Governor(
        Policy(
            attribution=Attribution(environment="prod"),
            budgets=[Budget(scope="team", key="b", max_usd="0.000001")],
        )
    )
    child = Policy(attribution=Attribution(team="b"))
    with gov.task(team="a", feature="faq") as parent:
        call(gov)
        with gov.task(policy=child) as sub:
            assert sub.attribution == Attribution(
                environment="prod", team="b", feature="faq"
            )
            with pytest.raises(BudgetExceeded) as refused:
                call(gov)
    assert refused.value.scope == "team:b"
    assert parent.attribution.team == "a"


def test_a_sub_task_policy_naming_none_or_the_governors_values_names_nothing() -> None:
    """A value set to None, or one a copy of the governor's policy carries,
    is not named by the sub-task: the parent's value stays."""
    gov = Governor(Policy(attribution=Attribution(team="platform", feature="f0")))
    cleared = Policy.model_validate({"attribution": {"team": None}})
    copied = gov.policy.model_copy(update={"name": "tighter"})
    with gov.task(team="search", feature="faq"):
        with gov.task(policy=cleared) as sub:
            assert (sub.attribution.team, sub.attribution.feature) == (
                "search",
                "faq",
            )
        with gov.task(policy=copied) as sub:
            assert (sub.attribution.team, sub.attribution.feature) == (
                "search",
                "faq",
            )


def test_decorator_follows_asyncio_tasks() -> None:
    """A decorated coroutine's attribution reaches tasks it spawns."""
    gov = Governor()

    @attribute(team="async-team")
    async def run() -> dict[str, str]:
        async def child() -> dict[str, str]:
            async with gov.atask() as task:
                return task.report().attribution

        return await asyncio.create_task(child())

    assert asyncio.run(run()) == {"team": "async-team"}


def test_threads_inherit_through_a_copied_context() -> None:
    """A thread started with a copied context keeps the attribution."""
    gov = Governor()
    seen: list[dict[str, str]] = []

    def work() -> None:
        with gov.task() as task:
            seen.append(task.report().attribution)

    with attribute(team="threaded"):
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(work,))
        thread.start()
        thread.join()
    assert seen == [{"team": "threaded"}]


def test_values_go_into_otel_baggage() -> None:
    """attribute() puts its values into OpenTelemetry baggage."""
    with attribute(team="search", tags={"tier": "gold"}):
        assert baggage.get_baggage("governor.team") == "search"
        assert baggage.get_baggage("governor.tag.tier") == "gold"
    assert baggage.get_baggage("governor.team") is None


def test_litellm_metadata_attributes_a_bare_call(capture: SpanCapture) -> None:
    """A call outside any task is charged to the team in LiteLLM's metadata."""
    gov = Governor(tracer_provider=capture.provider)
    call(gov, metadata={"team": "billing", "feature": "invoices"})
    task = capture.task()
    assert (task.attributes[attr.TEAM], task.attributes[attr.FEATURE]) == (
        "billing",
        "invoices",
    )


class _State(TypedDict):
    n: int


def _one_step_graph(gov: Governor) -> Any:
    """A governed graph of one node that makes no model call."""
    graph = StateGraph(_State)
    graph.add_node("step", lambda state: {"n": state["n"] + 1})
    graph.add_edge(START, "step")
    graph.add_edge("step", END)
    return govern(graph.compile(), gov)


EMPTY_TEAM = (
    "metadata['team'] is {!r}: set it to a non-empty team name, or leave the "
    "key out (or None) for no team"
)


@pytest.mark.parametrize("value", ["", "  "])
def test_litellm_metadata_refuses_an_empty_team(value: str) -> None:
    """metadata={"team": ""} and {"team": "  "} alike: an error naming the key.

    Read as unset, an empty team would skip the team's budgets silently.
    """
    gov = Governor(Policy(budgets=[Budget(max_usd="1", scope="team", key="search")]))
    with pytest.raises(PolicyError) as caught:
        call(gov, metadata={"team": value})
    assert str(caught.value) == EMPTY_TEAM.format(value)


@pytest.mark.parametrize("value", ["", "  "])
def test_langgraph_metadata_refuses_an_empty_team(value: str) -> None:
    """config["metadata"] is read as LiteLLM's metadata is: the same error."""
    graph = _one_step_graph(Governor())
    with pytest.raises(PolicyError) as caught:
        graph.invoke({"n": 0}, {"metadata": {"team": value}})
    assert str(caught.value) == EMPTY_TEAM.format(value)


def test_metadata_none_sets_nothing_and_numbers_read_as_text() -> None:
    """{"team": None} leaves the team unset; {"org": 42} charges org "42"."""
    graph = _one_step_graph(Governor())
    graph.invoke({"n": 0}, {"metadata": {"team": None, "org": 42, "user": 0}})
    report = graph.last_report
    assert report is not None
    assert report.attribution == {"org": "42", "user": "0"}


def test_values_in_names_each_empty_key() -> None:
    """The error names the key that was empty, whichever scope it is."""
    with pytest.raises(PolicyError) as caught:
        Attribution.values_in({"team": "search", "environment": ""})
    assert str(caught.value) == (
        "metadata['environment'] is '': set it to a non-empty environment name, "
        "or leave the key out (or None) for no environment"
    )


@pytest.mark.parametrize("name", ["search ", " search", "sea\nrch", "search\x00"])
def test_a_name_that_only_looks_like_another_is_refused(name: str) -> None:
    """Padding or control characters would make a second tenant that a budget
    keyed on the plain name skips."""
    with pytest.raises(PolicyError, match=r"spaces|control characters"):
        Attribution(team=name)
    with pytest.raises(PolicyError, match=r"metadata\['team'\]"):
        Attribution.values_in({"team": name})


def test_task_keywords_are_typed_as_the_attribution_fields() -> None:
    """gov.task(team=..., tags={...}) type-checks, and a typo does not: the
    keywords are typed by a TypedDict that must match Attribution's fields."""
    import typing

    from governor._engine import ScopeValues
    from governor.policies._model import ATTRIBUTION_FIELDS

    assert set(ScopeValues.__annotations__) == {*ATTRIBUTION_FIELDS, "tags"}
    for method in (Governor.task, Governor.atask, Governor.open_task):
        hint = typing.get_type_hints(method)["scopes"]
        assert typing.get_args(hint) == (ScopeValues,), method.__name__


BAD_TAG_VALUES = ["", "  ", "cr\rx", "nl\nx", " padded", "tab\t"]


@pytest.mark.parametrize("value", BAD_TAG_VALUES)
def test_a_tag_value_is_checked_as_team_names_are(value: str) -> None:
    """An empty, blank, padded or control-character tag value is refused by
    Attribution, attribute() and gov.task(), naming the tag."""
    gov = Governor()
    tags = {"customer": value}
    opens = [
        lambda: Attribution(tags=tags),
        lambda: attribute(tags=tags),
        lambda: gov.task(team="t", tags=tags).__enter__(),
    ]
    for open_one in opens:
        with pytest.raises(PolicyError) as caught:
            open_one()
        assert f"tag 'customer' is {value!r}: a tag value must " in str(caught.value)
    assert not gov._open_tasks


@pytest.mark.parametrize("name", ["", "  ", "k\r", "k\nx", " k"])
def test_a_tag_name_is_checked_as_team_names_are(name: str) -> None:
    """A tag name must be a usable name too; the error quotes it."""
    with pytest.raises(PolicyError) as caught:
        Attribution(tags={name: "v"})
    assert f"tag name {name!r}: a tag name must " in str(caught.value)


def test_a_tag_value_may_hold_a_hash() -> None:
    """'#' splits budget line keys, which tags never name: it is kept."""
    assert Attribution(tags={"ticket": "#123"}).tags == {"ticket": "#123"}
