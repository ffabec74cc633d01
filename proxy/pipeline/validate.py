"""Request validation as a stage: after auth, before anything that counts or spends. An ingress whose
protocol is not chat completions gets its body converted here (proxy/ingress/), so every stage after this
one, and every converting provider, reads an OpenAI chat body."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

from proxy.api.parse import refuse_routing_fields, validate_chat, validate_embeddings
from proxy.context import ChatCall
from proxy.errors import InvalidRequest
from proxy.ingress.completions_request import validate_completions
from proxy.ingress.messages_request import validate_messages
from proxy.ingress.responses_request import check_responses, validate_responses
from proxy.ingress.responses_store import ResponsesStore

# Each other protocol's output-token field, capped by server.max_output_tokens like chat's.
OUTPUT_FIELD = {"messages": "max_tokens", "responses": "max_output_tokens", "completions": "max_tokens"}


def _at_most(body: dict[str, Any], name: str, cap: int) -> None:
    v = body.get(name)
    if isinstance(v, int) and not isinstance(v, bool) and v > cap:
        raise InvalidRequest(f"Invalid '{name}': at most {cap} (server.max_output_tokens).", param=name,
                             code="invalid_value")


def tenant(call: ChatCall) -> str:
    """Whose stored responses a call may see: its key's."""
    return call.key.id if call.key is not None else "anonymous"


class ValidateStage:
    traced = False          # no span of its own: µs of bookkeeping (see Tracing.bind_checks)

    def __init__(self, max_output_tokens: int = 262_144, responses: ResponsesStore | None = None) -> None:
        self.max_output_tokens = max_output_tokens      # server.max_output_tokens
        self.responses = responses

    def check(self, call: ChatCall) -> Awaitable[None] | None:
        if call.endpoint == "chat.completions":
            validate_chat(call, self.max_output_tokens)
        elif call.endpoint == "embeddings":
            validate_embeddings(call)
        elif call.endpoint in OUTPUT_FIELD:
            refuse_routing_fields(call.body)
            _at_most(call.body, OUTPUT_FIELD[call.endpoint], self.max_output_tokens)
            if call.endpoint == "messages":
                validate_messages(call)
            elif call.endpoint == "completions":
                validate_completions(call)
            elif call.body.get("previous_response_id") is None:
                validate_responses(call, [])
            else:
                return self._continue(call)
        return None

    async def _continue(self, call: ChatCall) -> None:
        """Rebuild the conversation of `previous_response_id` (stored here: converted targets), or let the
        id through to the provider that holds it (created by a pass-through target)."""
        check_responses(call.body)
        prev = call.body["previous_response_id"]
        stored = await self.responses.get(tenant(call), prev) if self.responses is not None else None
        if stored is None:
            raise InvalidRequest(f"Previous response with id '{prev}' not found.", param="previous_response_id",
                                 code="previous_response_not_found")
        if stored.response is not None:
            call.raw_body = None          # ours: a provider's own Responses API could not continue it
        else:
            call.pinned_provider = stored.provider   # the upstream's: only the provider holding it can go on
        validate_responses(call, stored.messages)
