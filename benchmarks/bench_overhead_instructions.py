"""Instructions per governed call, counted by valgrind's callgrind.

Wall-clock overhead on a shared machine is noisy; an instruction count
repeats to within a fraction of a percent. This driver makes ``--calls``
governed calls through ``GovernedLiteLLM`` (after a warm-up), each outside a
task under a dollar budget, with the provider replaced by a function that
returns a prebuilt LiteLLM response: the governor's own work, as
``bench_overhead.py`` measures it in its fixed mode. Run it under callgrind
at two call counts and divide the difference of the totals by the
difference of the counts, which cancels start-up and imports:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/bench_overhead_instructions.py --calls 1000
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python benchmarks/bench_overhead_instructions.py --calls 3000

(read the "Collected" total that each run prints). Set PYTHONHASHSEED=0 for
repeatable counts.
"""

from __future__ import annotations

import argparse
import gc
import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm

from governor import Budget, Governor, Policy
from governor.adapters.litellm import GovernedLiteLLM

REQUEST = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "In one sentence, why is the sky blue?"},
    ],
    "max_tokens": 64,
}
WARM_UP_CALLS = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    calls = parser.parse_args().calls

    response = litellm.completion(
        **REQUEST, mock_response="Rayleigh scattering favours short wavelengths."
    )
    gov = Governor(Policy(budgets=[Budget(max_usd=10**6)]))
    governed = GovernedLiteLLM(gov, completion=lambda **_: response)
    for _ in range(WARM_UP_CALLS):
        governed.completion(**REQUEST)
    gc.collect()

    for _ in range(calls):
        governed.completion(**REQUEST)
    print(f"{calls} governed calls made")


if __name__ == "__main__":
    main()
