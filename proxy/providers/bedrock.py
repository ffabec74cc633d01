"""AWS Bedrock Runtime: chat through Converse / ConverseStream, embeddings through InvokeModel (Titan).

Auth: a Bedrock API key (`api_key`, sent as `Authorization: Bearer`), else SigV4 with botocore's
signer (service `bedrock`), from the configured keys or, when those are empty, botocore's default
credential chain. botocore is the optional `bedrock` extra; it is imported only when SigV4 is needed.
Signing is done in `to_wire` over the exact URL, headers and body bytes that go out; the model id is
percent-encoded once in the URL (`raw_url` keeps the transport from re-quoting it), and SigV4 encodes
the path a second time for the canonical request, as AWS expects for every service but S3.

`health_request` is None: listing models belongs to the `bedrock` control-plane service, and the only
cheap bedrock-runtime reads (ListAsyncInvokes) need an IAM permission an inference-only role lacks, so
a probe would report healthy providers as down.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import struct
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
import orjson

from proxy.config import ConfigError, ProviderConfig, Target
from proxy.context import ChatCall, Usage
from proxy.errors import (
    InvalidRequest,
    ProviderKeyMissing,
    UpstreamError,
    UpstreamTimeout,
    upstream_error_for_status,
)
from proxy.providers.base import WireRequest, retry_after_seconds
from proxy.providers.bedrock_stream import ConverseStreamTranslator
from proxy.providers.bedrock_wire import (
    completion_parts,
    converse_body,
    unsupported_params,
)
from proxy.providers.openai import upstream_body
from proxy.streaming.chunks import completion_body, new_id, wants_usage

SERVICE = "bedrock"
EMBEDDING_FIELDS = frozenset({"model", "input", "dimensions", "encoding_format"})


class BedrockSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    region: Annotated[str, msgspec.Meta(min_length=1)]
    aws_access_key_id: str = ""
    aws_secret_access_key: str = ""
    aws_session_token: str = ""

    def __post_init__(self) -> None:
        if bool(self.aws_access_key_id) != bool(self.aws_secret_access_key):
            raise ValueError("aws_access_key_id and aws_secret_access_key must be set together")


class BedrockProvider:
    Settings = BedrockSettings
    transport = "http"
    api_key_optional = True     # an empty api_key means SigV4 with AWS credentials, not a missing key

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.settings: BedrockSettings = config.settings
        region = self.settings.region
        self.base = (config.base_url or f"https://bedrock-runtime.{region}.amazonaws.com").rstrip("/")
        self._bearer = config.api_key
        self._creds: Any = None          # botocore Credentials (static) or RefreshableCredentials (chain)
        self._botocore: Any = None
        if not self._bearer:
            self._botocore = _import_botocore(config.name)
            s = self.settings
            if s.aws_access_key_id:
                self._creds = self._botocore.credentials.Credentials(
                    s.aws_access_key_id, s.aws_secret_access_key, s.aws_session_token or None)

    # -- credentials ---------------------------------------------------------------------------------

    async def prepare(self, target: Target, transport: Any) -> None:
        """Resolve (or refresh) credentials from the default chain off the event loop: the chain may
        read files or call the instance metadata service."""
        if self._bearer:
            return
        if self._creds is None:
            self._creds = await asyncio.to_thread(self._chain_credentials)
        refresh = getattr(self._creds, "refresh_needed", None)
        if refresh is not None and refresh():
            await asyncio.to_thread(self._creds.get_frozen_credentials)

    def _chain_credentials(self) -> Any:
        return self._botocore.session.get_session().get_credentials()

    def _frozen(self) -> Any:
        creds = self._creds
        if creds is None:
            # to_wire without prepare (tests, tools): environment variables only, no blocking I/O.
            creds = self._botocore.credentials.EnvProvider().load()
        if creds is None:
            raise ProviderKeyMissing(self.config.name, "AWS credentials",
                                     "no AWS credentials (set aws_access_key_id/aws_secret_access_key, "
                                     "AWS_* environment variables, or api_key)")
        return creds.get_frozen_credentials()

    def _signed(self, url: str, body: bytes, accept: str) -> WireRequest:
        headers = {"Content-Type": "application/json", "Accept": accept, **self.config.headers}
        if self._bearer:
            headers["Authorization"] = f"Bearer {self._bearer}"
            return WireRequest(url=url, headers=headers, body=body, raw_url=True)
        bc = self._botocore
        req = bc.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=headers)
        bc.auth.SigV4Auth(self._frozen(), SERVICE, self.settings.region).add_auth(req)
        return WireRequest(url=url, headers=dict(req.headers.items()), body=body, raw_url=True)

    # -- requests ------------------------------------------------------------------------------------

    def _url(self, model: str, op: str) -> str:
        return f"{self.base}/model/{quote(model, safe='')}/{op}"

    def _dropped(self, bad: list[str]) -> list[str]:
        if bad and self.config.unsupported_params == "reject":
            raise InvalidRequest(f"Unsupported parameter: '{bad[0]}' is not supported by this model's provider.",
                                 param=bad[0], code="unsupported_parameter")
        return bad

    def to_wire(self, call: ChatCall, target: Target) -> WireRequest:
        body = upstream_body(call, target.model)
        if call.endpoint == "embeddings":
            return self._embeddings_wire(body, target)
        dropped = self._dropped(unsupported_params(body))
        payload = orjson.dumps(converse_body(body))
        if call.stream:
            wire = self._signed(self._url(target.model, "converse-stream"), payload,
                                "application/vnd.amazon.eventstream")
        else:
            wire = self._signed(self._url(target.model, "converse"), payload, "application/json")
        wire.dropped = dropped
        return wire

    def _embeddings_wire(self, body: dict[str, Any], target: Target) -> WireRequest:
        """Titan text embeddings take one `inputText` per call; a pure adapter cannot fan one request
        out into several, so a list input must hold exactly one string."""
        inp = body.get("input")
        if isinstance(inp, list) and len(inp) == 1:
            inp = inp[0]
        if not isinstance(inp, str):
            raise InvalidRequest("Bedrock embeddings accept one string per request: send `input` as a string "
                                 "or a list of one string.", param="input")
        dropped = self._dropped(sorted(k for k, v in body.items() if k not in EMBEDDING_FIELDS and v is not None))
        payload: dict[str, Any] = {"inputText": inp}
        if body.get("dimensions") is not None:
            payload["dimensions"] = body["dimensions"]
        wire = self._signed(self._url(target.model, "invoke"), orjson.dumps(payload), "application/json")
        wire.dropped = dropped
        return wire

    # -- responses -----------------------------------------------------------------------------------

    def from_wire(self, status: int, body: bytes, call: ChatCall, target: Target) -> tuple[bytes, Usage]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict):
            raise UpstreamError(f"provider '{self.config.name}' sent a body that is not a JSON object")
        if call.endpoint == "embeddings":
            return _embeddings_response(data, call, target)
        message, finish, usage = completion_parts(data)
        return completion_body(id=new_id(), model=target.model, message=message, finish_reason=finish,
                               usage=usage), usage

    def new_stream(self, call: ChatCall, target: Target) -> ConverseStreamTranslator:
        return ConverseStreamTranslator(target.model, wants_usage(call.body))

    def health_request(self) -> WireRequest | None:
        return None

    def error_from_wire(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        return bedrock_error(self.config.name, status, body, headers)


# -- errors ------------------------------------------------------------------------------------------

# Bedrock gives no error code for an over-long prompt: it is a ValidationException whose message varies
# by model. The one text match in this adapter, applied only to ValidationException, recognises:
#   "Input is too long for requested model."                          (Converse, Anthropic models)
#   "prompt is too long: 210000 tokens > 200000 maximum"              (Anthropic, wrapped by Bedrock)
#   "input length and `max_tokens` exceed context limit: ..."         (Anthropic)
#   "Too many input tokens. Max input tokens: 8192, ..."              (Titan)
#   "This model's maximum context length is 32768 tokens ..."         (Mistral / Llama)
CONTEXT_TOO_LONG = re.compile(
    r"input is too long|prompt is too long|too many input tokens|exceed context limit|maximum context length",
    re.IGNORECASE)

# AWS error type (x-amzn-ErrorType / __type) -> the HTTP status OpenAI clients expect.
ERROR_STATUS = {
    "ThrottlingException": 429, "ServiceQuotaExceededException": 429,
    "ValidationException": 400, "AccessDeniedException": 403, "ResourceNotFoundException": 404,
    "ServiceUnavailableException": 503, "ModelNotReadyException": 503,
    "InternalServerException": 500, "ModelErrorException": 500, "ModelStreamErrorException": 500,
    # Our credentials were refused: a gateway fault (401 maps to 502 provider_auth_failed).
    "UnrecognizedClientException": 401, "InvalidSignatureException": 401, "IncompleteSignatureException": 401,
    "ExpiredTokenException": 401, "MissingAuthenticationTokenException": 401, "InvalidClientTokenId": 401,
    "SignatureDoesNotMatch": 401,
}


def _header(headers: Any, name: str) -> str:
    if headers is None:
        return ""
    value = headers.get(name)
    if value is None:
        lname = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lname), None)
    return value if isinstance(value, str) else ""


def error_type(headers: Any, data: Any) -> str:
    """`ThrottlingException:http://internal.amazon.com/coral/...` or `com.amazon.coral#X` -> the bare name."""
    raw = _header(headers, "x-amzn-ErrorType")
    if not raw and isinstance(data, dict):
        raw = str(data.get("__type") or data.get("code") or "")
    return raw.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def bedrock_error(provider: str, status: int, body: bytes, headers: Any) -> UpstreamError:
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        data = None
    message = ""
    if isinstance(data, dict):
        message = str(data.get("message") or data.get("Message") or "")
    etype = error_type(headers, data)
    message = message or f"provider '{provider}' answered HTTP {status}{f' ({etype})' if etype else ''}"
    if etype == "ModelTimeoutException":
        return UpstreamTimeout(message)
    if etype == "ValidationException" and CONTEXT_TOO_LONG.search(message):
        return upstream_error_for_status(400, message, type="invalid_request_error",
                                         code="context_length_exceeded")
    return upstream_error_for_status(ERROR_STATUS.get(etype, status), message,
                                     retry_after=retry_after_seconds(headers))


# -- helpers -----------------------------------------------------------------------------------------

def _import_botocore(provider: str) -> Any:
    try:
        import botocore.auth
        import botocore.awsrequest
        import botocore.credentials
        import botocore.session
    except ImportError:
        raise ConfigError(f"providers.{provider}: type 'bedrock' signs requests with botocore, which is not "
                          "installed: pip install 'llm-service[bedrock]' (or set api_key to a Bedrock API key)"
                          ) from None
    # botocore.auth logs the canonical request at DEBUG, session token included: keep it out of logs.
    log = logging.getLogger("botocore.auth")
    if log.level == logging.NOTSET or log.level < logging.INFO:
        log.setLevel(logging.INFO)
    return botocore


def _embeddings_response(data: dict[str, Any], call: ChatCall, target: Target) -> tuple[bytes, Usage]:
    emb = data.get("embedding")
    if not isinstance(emb, list):
        raise UpstreamError("Bedrock embeddings answer has no `embedding` list")
    if call.body.get("encoding_format") == "base64":
        # OpenAI's base64 format: little-endian float32 values.
        value: Any = base64.b64encode(struct.pack(f"<{len(emb)}f", *emb)).decode()
    else:
        value = emb
    n = int(data.get("inputTextTokenCount") or 0)
    usage = Usage(prompt_tokens=n, total_tokens=n)
    out = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": value}],
           "model": target.model, "usage": {"prompt_tokens": n, "total_tokens": n}}
    return orjson.dumps(out), usage
