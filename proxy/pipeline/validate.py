"""Request validation as a stage: after auth, before anything that counts or spends."""

from __future__ import annotations

from proxy.api.parse import validate_chat, validate_embeddings
from proxy.context import ChatCall
from proxy.ingress.messages_request import validate_messages


class ValidateStage:
    traced = False          # no span of its own: µs of bookkeeping (see Tracing.bind_checks)

    def __init__(self, max_output_tokens: int = 262_144) -> None:
        self.max_output_tokens = max_output_tokens      # server.max_output_tokens

    def check(self, call: ChatCall) -> None:
        if call.endpoint == "chat.completions":
            validate_chat(call, self.max_output_tokens)
        elif call.endpoint == "embeddings":
            validate_embeddings(call)
        elif call.endpoint == "messages":
            validate_messages(call)
