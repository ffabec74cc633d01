"""The plan: resolve the model, check the key's scope, order the targets, once per call (a pipeline check).

Keys are scoped by the public names `/v1/models` shows (names, `name@version`, aliases, or globs over
them), never by upstream model ids: a model's targets are the operator's choice and always allowed. A
model may fall back to other public models (`models[].fallbacks`); their targets join the plan only when
the key may use them too. Cache, rate limits, accounting and the router all read `call.plan`.
"""

from __future__ import annotations

from proxy.config import ModelConfig
from proxy.context import ChatCall, Plan, Principal
from proxy.errors import Forbidden, InvalidRequest
from proxy.routing.balance import ordered
from proxy.routing.health import Health
from proxy.routing.models import ModelCatalog


def public_names(model: ModelConfig) -> tuple[str, ...]:
    names = [model.name, *model.aliases]
    if model.version:
        names.append(f"{model.name}@{model.version}")
    return tuple(names)


def may_use(key: Principal | None, requested: str, model: ModelConfig) -> bool:
    """The name the client sent, or any public name of the model it resolved to."""
    if key is None or key.models is None:
        return True
    return key.may_use(requested) or any(key.may_use(n) for n in public_names(model))


class Planner:
    traced = False          # no span of its own: µs of bookkeeping (see Tracing.bind_checks)

    def __init__(self, models: ModelCatalog, health: Health) -> None:
        self.models, self.health = models, health

    def check(self, call: ChatCall) -> None:
        call.plan = self.plan(call)

    def plan(self, call: ChatCall) -> Plan:
        model = self.models.resolve(call.model)          # 404 for an unknown name
        key = call.key
        if not may_use(key, call.model, model):
            raise Forbidden(f"This key may not use model '{call.model}'.", param="model")
        if model.deprecated:
            call.response_headers["x-llm-deprecated"] = model.deprecated
        targets = ordered(model, self.health)
        if call.headers.get("x-llm-fallbacks", "").strip().lower() == "none":
            targets = targets[:1]
        elif model.fallbacks:
            targets = list(targets)
            for name in model.fallbacks:
                fb = self.models.resolve(name)
                if may_use(key, name, fb):           # a fallback the key may not use is skipped
                    targets.extend(ordered(fb, self.health))
        if call.pinned_provider is not None:
            targets = [t for t in targets if t.provider == call.pinned_provider]
            if not targets:
                raise InvalidRequest(f"Previous response was created by provider '{call.pinned_provider}', which "
                                     f"model '{call.model}' does not route to.", param="previous_response_id",
                                     code="previous_response_not_found")
        name = f"{model.name}@{model.version}" if model.version else model.name
        return Plan(model, name, targets)
