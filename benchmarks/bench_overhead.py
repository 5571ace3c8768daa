"""Added latency of a governed LiteLLM call over the same call ungoverned.

Both run in one process, interleaved call by call (A, B, A, B, ...) so that
drift in machine load hits both alike. The provider is LiteLLM's offline mock
(``mock_response``), so the figures are LiteLLM's own client-side work plus,
for the governed call, the governor's. A second pair replaces the provider by
a function returning a prebuilt response, which leaves exactly the governor's
share; a third times the engine's own steps (reserve, price, settle) alone.
The governed calls each run as a task of their own, under a dollar budget,
with no tracer provider configured (the default for a library).

Run:  python benchmarks/bench_overhead.py [--calls 3000] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from governor import Budget, CallRequest, CallResult, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM
from governor.pricing import Usage

MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "In one sentence, why is the sky blue?"},
]
KWARGS: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": MESSAGES,
    "mock_response": "Rayleigh scattering favours short wavelengths.",
    "max_tokens": 64,
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleaved(calls: int) -> dict[str, float]:
    """Time ungoverned and governed calls alternately; return microseconds."""
    policy = Policy(budgets=[Budget(max_usd=10**6)])
    gov = Governor(policy)
    governed = GovernedLiteLLM(gov)
    plain: list[float] = []
    ruled: list[float] = []
    for _ in range(50):  # warm both paths: tokenizer, price map, imports
        litellm.completion(**KWARGS)
        governed.completion(**KWARGS)
    gc.collect()
    for _ in range(calls):
        start = time.perf_counter()
        litellm.completion(**KWARGS)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        governed.completion(**KWARGS)
        ruled.append(time.perf_counter() - start)
    us = 1e6
    return {
        "ungoverned_p50_us": percentile(plain, 0.5) * us,
        "governed_p50_us": percentile(ruled, 0.5) * us,
        "ungoverned_p99_us": percentile(plain, 0.99) * us,
        "governed_p99_us": percentile(ruled, 0.99) * us,
        "added_p50_us": (percentile(ruled, 0.5) - percentile(plain, 0.5)) * us,
        "added_p99_us": (percentile(ruled, 0.99) - percentile(plain, 0.99)) * us,
        "ratio_p50": percentile(ruled, 0.5) / percentile(plain, 0.5),
        "paired_median_diff_us": statistics.median(
            r - p for r, p in zip(ruled, plain, strict=True)
        )
        * us,
    }


def adapter_only(calls: int) -> dict[str, float]:
    """Governed vs plain call of a provider that returns a prebuilt response.

    The same interleaving, with LiteLLM's own client work taken out: what is
    left is exactly what the governor adds to a call (adapter and engine).
    """
    response = litellm.completion(**KWARGS)

    def provider(**_: Any) -> Any:
        return response

    request = {k: v for k, v in KWARGS.items() if k != "mock_response"}
    governed = GovernedLiteLLM(
        Governor(Policy(budgets=[Budget(max_usd=10**6)])), completion=provider
    )
    plain: list[float] = []
    ruled: list[float] = []
    for _ in range(200):
        governed.completion(**request)
    gc.collect()
    for _ in range(calls):
        start = time.perf_counter()
        provider(**request)
        plain.append(time.perf_counter() - start)
        start = time.perf_counter()
        governed.completion(**request)
        ruled.append(time.perf_counter() - start)
    us = 1e6
    return {
        "fixed_ungoverned_p50_us": percentile(plain, 0.5) * us,
        "fixed_governed_p50_us": percentile(ruled, 0.5) * us,
        "fixed_added_p50_us": (percentile(ruled, 0.5) - percentile(plain, 0.5)) * us,
        "fixed_added_p99_us": (percentile(ruled, 0.99) - percentile(plain, 0.99)) * us,
    }


def engine_only(calls: int) -> dict[str, float]:
    """Time begin_call + end_call alone, with a LiteLLM-shaped usage dict."""
    gov = Governor(Policy(budgets=[Budget(max_usd=10**6)]))
    usage = Usage(prompt_tokens=25, completion_tokens=9)
    request = CallRequest(model="gpt-4o-mini", messages=MESSAGES, max_output_tokens=64)
    samples: list[float] = []
    with gov.task():
        for _ in range(200):
            gov.end_call(gov.begin_call(request), CallResult(usage=usage))
        gc.collect()
        for _ in range(calls):
            start = time.perf_counter()
            admission = gov.begin_call(request)
            gov.end_call(admission, CallResult(usage=usage))
            samples.append(time.perf_counter() - start)
    return {
        "engine_p50_us": percentile(samples, 0.5) * 1e6,
        "engine_p99_us": percentile(samples, 0.99) * 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = {
        "calls": args.calls,
        **interleaved(args.calls),
        **adapter_only(args.calls),
        **engine_only(args.calls),
    }
    results["python"] = sys.version.split()[0]
    from importlib.metadata import version

    results["litellm"] = version("litellm")
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for key, value in results.items():
            shown = f"{value:.1f}" if isinstance(value, float) else value
            print(f"{key:>24}: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
