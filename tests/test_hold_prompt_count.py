"""A call cut off after its request went out is charged its hold with the
prompt counted, not at the byte bound admission may have used for it.

Real LiteLLM calls against a stub server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import litellm
import pytest

from governor import Governor, TaskReport
from governor.adapters.litellm import GovernedLiteLLM
from governor.testing import StubBehaviour, StubServer

MODEL = "openai/gpt-4o-mini"
MAX_TOKENS = 40
IN_PRICE, OUT_PRICE = Decimal("0.15e-6"), Decimal("0.6e-6")
# A prompt of many short words: its byte bound is far above its count.
PROMPT = " ".join(["Summarise the ticket below in one line."] * 40)
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[StubServer]:
    monkeypatch.setattr(litellm, "suppress_debug_info", True)
    with StubServer(default=StubBehaviour(answer="ok", delay_s=2)) as server:
        yield server


def _request(stub: StubServer, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": MAX_TOKENS,
        "api_base": stub.base_url + "/v1",
        "api_key": "sk-test",
        **extra,
    }


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_call_cancelled_after_sending_is_charged_its_counted_prompt(
    stub: StubServer, stream: bool
) -> None:
    gov = Governor()
    llm = GovernedLiteLLM(gov)

    async def run() -> TaskReport:
        async with gov.atask() as task:
            call = asyncio.ensure_future(
                llm.acompletion(**_request(stub, stream=stream))
            )
            while not stub.requests:
                await asyncio.sleep(0.01)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        return task.report()

    report = asyncio.run(run())
    counted = litellm.token_counter(model="gpt-4o-mini", messages=MESSAGES)
    assert report.output_tokens == MAX_TOKENS
    assert counted <= report.input_tokens <= math.ceil(counted * 1.05) + 8
    assert report.cost_usd == (
        report.input_tokens * IN_PRICE + report.output_tokens * OUT_PRICE
    )
