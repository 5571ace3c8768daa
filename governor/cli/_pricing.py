"""``governor pricing MODEL``: print the rate-card entry the governor will use."""

from __future__ import annotations

import argparse
import json
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from governor.cli._fail import fail
from governor.cli._policy import POLICY_HELP, load_policy, unpriced_advice

if TYPE_CHECKING:
    from governor.pricing import Rate, RateTier

_COMMAND = "governor pricing"

_FIELDS = (
    ("input", "input_per_token"),
    ("output", "output_per_token"),
    ("cache_read", "cache_read_per_token"),
    ("cache_write", "cache_write_per_token"),
    ("reasoning", "reasoning_per_token"),
)


def register(sub: Any, name: str, help_text: str) -> None:
    """Add ``pricing`` to the command line."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=help_text
    )
    parser.add_argument("model", metavar="MODEL", help="a model name, as called")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document to stdout"
    )
    parser.add_argument(
        "--remote-price-map",
        action="store_true",
        help="fetch LiteLLM's current price map first (network)",
    )
    parser.add_argument(
        "--policy",
        default="default",
        help=f"price as this policy does: {POLICY_HELP}",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from governor._errors import ConfigError, PriceUnknown
    from governor.pricing import RateCard

    requested = {"requested": args.model}
    if not args.model.strip():
        message = (
            f"MODEL is {args.model!r}; give a model name as it is called, e.g. "
            "gpt-4o-mini"
        )
        return fail(args, _COMMAND, message, 2, document=requested)
    try:
        pricing = load_policy(args.policy).pricing
    except ConfigError as exc:
        return fail(args, _COMMAND, exc, 2, document=requested)
    if args.remote_price_map:
        pricing = pricing.model_copy(update={"remote_price_map": True})
    card = RateCard(pricing)
    try:
        rate = card.rate(args.model)
    except PriceUnknown as exc:
        # The advice a command line can follow (a JSON --policy file), in
        # either form, rather than the Python the exception speaks of.
        advice = unpriced_advice(exc.model, exc.reason)
        return fail(args, _COMMAND, exc, 1, message=advice, document=requested)
    document = describe(args.model, rate)
    print(json.dumps(document, indent=2) if args.json else _as_text(document))
    return 0


def describe(requested: str, rate: Rate) -> dict[str, Any]:
    """Return a rate as plain data, prices in US dollars per million tokens."""
    return {
        "requested": requested,
        "model": rate.model,
        "source": rate.source,
        "provider": rate.provider,
        "usd_per_mtok": _per_mtok(rate),
        "usd_per_second": _text(rate.usd_per_second),
        "tiers": [
            {"above_input_tokens": t.above_input_tokens, "usd_per_mtok": _per_mtok(t)}
            for t in rate.tiers
        ],
        "max_input_tokens": rate.max_input_tokens,
        "max_output_tokens": rate.max_output_tokens,
    }


def _per_mtok(prices: Rate | RateTier) -> dict[str, str]:
    return {
        label: _text(getattr(prices, attr).scaleb(6)) or "0" for label, attr in _FIELDS
    }


def _text(value: Decimal | None) -> str | None:
    # Fixed-point text: 2.5E+1 would read badly in a price list.
    return None if value is None else format(value.normalize(), "f")


def _as_text(document: dict[str, Any]) -> str:
    lines = [
        f"model      {document['model']}  (asked for {document['requested']})",
        f"source     {document['source']}",
        f"provider   {document['provider'] or '-'}",
        "USD per million tokens:",
    ]
    lines += [f"  {k:<12}{v}" for k, v in document["usd_per_mtok"].items()]
    if document["usd_per_second"] is not None:
        lines.append(f"USD per second  {document['usd_per_second']}")
    for tier in document["tiers"]:
        prices = ", ".join(f"{k} {v}" for k, v in tier["usd_per_mtok"].items())
        lines.append(f"above {tier['above_input_tokens']} prompt tokens: {prices}")
    lines.append(f"context window     {document['max_input_tokens'] or '-'} tokens")
    lines.append(f"max output         {document['max_output_tokens'] or '-'} tokens")
    return "\n".join(lines)
