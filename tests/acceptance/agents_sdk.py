"""Acceptance (manual, see README "More ways in"): the OpenAI Agents SDK, whose default model class calls
the Responses API, runs an agent through the gateway, plain and streamed.

    pip install openai-agents   # in a separate environment: it pins its own websockets
    LLM_BASE_URL=http://127.0.0.1:8080/v1 LLM_API_KEY=sk-... LLM_MODEL=mock python tests/acceptance/agents_sdk.py
"""

from __future__ import annotations

import asyncio
import os
import sys

from agents import Agent, OpenAIResponsesModel, Runner, set_tracing_disabled
from openai import AsyncOpenAI


async def main() -> int:
    set_tracing_disabled(True)                    # no trace upload to OpenAI
    client = AsyncOpenAI(base_url=os.environ["LLM_BASE_URL"], api_key=os.environ["LLM_API_KEY"])
    model = OpenAIResponsesModel(model=os.environ.get("LLM_MODEL", "mock"), openai_client=client)
    agent = Agent(name="Greeter", instructions="Greet the user.", model=model)
    result = await Runner.run(agent, "Say hello")
    streamed = Runner.run_streamed(agent, "Say hello")
    deltas = [e async for e in streamed.stream_events() if e.type == "raw_response_event"]
    if not result.final_output or streamed.final_output != result.final_output or not deltas:
        print("FAIL", repr(result.final_output), repr(streamed.final_output), len(deltas))
        return 1
    print(f"OK Runner.run and Runner.run_streamed via /v1/responses: {result.final_output!r} "
          f"({len(deltas)} stream events)")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
