"""The provider contract suite: every recorded case in tests/fixtures/<provider>/ against its adapter.

Request -> expected wire body; wire response -> expected OpenAI response; raw stream bytes -> expected
chunks and usage, fed whole, split at every byte offset, and one byte at a time; error body -> envelope.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.config import Target, parse
from proxy.context import ChatCall, Usage
from proxy.errors import UpstreamError
from proxy.providers.registry import provider_class

FIXTURES = Path(__file__).parent / "fixtures"
CASES = sorted(p for p in FIXTURES.glob("*/*.json"))
IGNORED = {"id", "created", "system_fingerprint"}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _provider(case: dict[str, Any]):
    cfg = parse({"server": {"master_key": "k"}, "providers": {"p": case["provider"]}, "models": []}, env={})
    pc = cfg.providers["p"]
    return provider_class(pc.type)(pc)


def _call(case: dict[str, Any]) -> ChatCall:
    body = json.loads(json.dumps(case["request"]))
    return ChatCall(body=body, model=body.get("model", ""), stream=bool(body.get("stream")),
                    endpoint=case.get("endpoint", "chat.completions"))


def _strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in IGNORED}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _tool_ids(obj: Any) -> Any:
    """Generated tool-call ids (call_<random>) are compared by presence, not value, when the case says so."""
    if isinstance(obj, dict):
        return {k: ("<id>" if k == "id" and isinstance(v, str) and v.startswith("call_") else _tool_ids(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [_tool_ids(v) for v in obj]
    return obj


def _norm(obj: Any, case: dict[str, Any]) -> Any:
    out = _strip(obj)
    return _tool_ids(out) if case.get("generated_tool_ids") else out


def _usage(d: dict[str, Any]) -> Usage:
    return Usage(**d)


def _chunks(sse: bytes) -> tuple[list[dict[str, Any]], bool]:
    events, done = [], False
    for block in sse.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: [DONE]"):
                done = True
            elif line.startswith(b"data:"):
                events.append(orjson.loads(line[5:]))
    return events, done


def _run_stream(case: dict[str, Any], pieces: list[bytes]) -> tuple[list[dict[str, Any]], bool, Usage | None]:
    provider = _provider(case)
    target = Target(provider="p", model=case["target_model"])
    translator = provider.new_stream(_call(case), target)
    out = b"".join(translator.feed(p) for p in pieces) + translator.finish()
    events, done = _chunks(out)
    return events, done, translator.usage


def _ids(case_paths: list[Path], key: str) -> list[Path]:
    return [p for p in case_paths if key in _load(p)]


def _name(p: Path) -> str:
    return f"{p.parent.name}/{p.stem}"


@pytest.mark.parametrize("path", _ids(CASES, "wire_request"), ids=_name)
def test_to_wire(path: Path) -> None:
    case = _load(path)
    provider = _provider(case)
    wire = provider.to_wire(_call(case), Target(provider="p", model=case["target_model"]))
    want = case["wire_request"]
    assert wire.method == want.get("method", "POST")
    if "url" in want:
        assert wire.url == want["url"]
    if "body" in want:
        assert orjson.loads(wire.body or b"null") == want["body"]
    lower = {k.lower(): v for k, v in wire.headers.items()}
    for k, v in want.get("headers", {}).items():
        assert lower.get(k.lower()) == v, k
    if "dropped" in want:
        assert sorted(wire.dropped) == sorted(want["dropped"])


@pytest.mark.parametrize("path", _ids(CASES, "wire_response"), ids=_name)
def test_from_wire(path: Path) -> None:
    case = _load(path)
    provider = _provider(case)
    body, usage = provider.from_wire(200, orjson.dumps(case["wire_response"]), _call(case),
                                     Target(provider="p", model=case["target_model"]))
    assert _norm(orjson.loads(body), case) == _norm(case["expected_response"], case)
    if "expected_usage" in case:
        assert usage == _usage(case["expected_usage"])


def _stream_bytes(case: dict[str, Any]) -> bytes:
    if "stream_b64" in case:
        return base64.b64decode(case["stream_b64"])
    return case["stream"].encode()


@pytest.mark.parametrize("path", _ids(CASES, "expected_chunks"), ids=_name)
def test_stream_any_split(path: Path) -> None:
    case = _load(path)
    raw = _stream_bytes(case)
    whole = _run_stream(case, [raw])
    events, done, usage = whole
    assert _norm(events, case) == _norm(case["expected_chunks"], case)
    assert done, "a complete stream must end with data: [DONE]"
    if "expected_stream_usage" in case:
        assert usage == _usage(case["expected_stream_usage"])
    for cut in range(1, len(raw)):
        got = _run_stream(case, [raw[:cut], raw[cut:]])
        assert _norm(got[0], case) == _norm(events, case), f"split at byte {cut}"
        assert got[1:] == whole[1:], f"split at byte {cut}"
    bytewise = _run_stream(case, [raw[i:i + 1] for i in range(len(raw))])
    assert _norm(bytewise[0], case) == _norm(events, case)
    assert bytewise[1:] == whole[1:]


@pytest.mark.parametrize("path", _ids(CASES, "expected_stream_error"), ids=_name)
def test_stream_error(path: Path) -> None:
    """A provider error inside the stream raises UpstreamError, whatever the split."""
    case = _load(path)
    raw = _stream_bytes(case)
    want = case["expected_stream_error"]
    for pieces in ([raw], [raw[i:i + 1] for i in range(len(raw))]):
        provider = _provider(case)
        translator = provider.new_stream(_call(case), Target(provider="p", model=case["target_model"]))
        with pytest.raises(UpstreamError) as info:
            for p in pieces:
                translator.feed(p)
            translator.finish()
        assert info.value.status == want["status"]
        if "code" in want:
            assert info.value.code == want["code"]


@pytest.mark.parametrize("path", _ids(CASES, "expected_error"), ids=_name)
def test_error_from_wire(path: Path) -> None:
    case = _load(path)
    provider = _provider(case)
    body = case["error_body"]
    raw = body.encode() if isinstance(body, str) else orjson.dumps(body)
    err = provider.error_from_wire(case["error_status"], raw, case.get("error_headers", {}))
    want = case["expected_error"]
    assert err.status == want["status"]
    for k in ("type", "code", "message", "param"):
        if k in want:
            assert getattr(err, k) == want[k], k
    if "retryable" in want:
        assert err.retryable == want["retryable"]


def test_every_provider_type_has_fixtures() -> None:
    from proxy.providers.registry import provider_types
    have = {p.parent.name for p in CASES}
    missing = sorted(t for t in provider_types() if t not in have and t != "mock")
    assert not missing, f"provider types without contract fixtures: {missing}"
