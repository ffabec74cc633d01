"""Legacy text completions (POST /v1/completions): checked here, then passed through to OpenAI-type
targets as they are (only `model` changes, and usage is asked for as for chat streams)."""

from __future__ import annotations

from proxy.context import ChatCall
from proxy.errors import InvalidRequest


def _prompt_ok(p: object) -> bool:
    if isinstance(p, str):
        return True
    if not isinstance(p, list) or not p:
        return False
    return (all(isinstance(x, str) for x in p) or all(isinstance(x, int) and not isinstance(x, bool) for x in p)
            or all(isinstance(x, list) and x and all(isinstance(t, int) for t in x) for x in p))


def validate_completions(call: ChatCall) -> None:
    body = call.body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model",
                             code="missing_required_parameter" if model is None else "invalid_type")
    if not _prompt_ok(body.get("prompt")):
        raise InvalidRequest("Invalid 'prompt': expected a string, an array of strings, or token arrays.",
                             param="prompt", code="missing_required_parameter" if body.get("prompt") is None
                             else "invalid_type")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("Invalid 'stream': expected a boolean.", param="stream", code="invalid_type")
    mt = body.get("max_tokens")
    if mt is not None and (isinstance(mt, bool) or not isinstance(mt, int) or mt < 0):
        raise InvalidRequest("Invalid 'max_tokens': expected a non-negative integer.", param="max_tokens",
                             code="invalid_value")
    call.model, call.stream = model, stream is True
