"""A batch's life, one step at a time, by whichever worker holds the batch's lease:

    validating -> in_progress -> finalizing -> completed
    validating -> failed (a bad line, a model the key may not use: nothing runs)
    in_progress -> cancelling -> cancelled      in_progress (past expires_at) -> expired

Validation is OpenAI's: every line's model is checked against the key before any line runs. While lines
run, each step refreshes `request_counts` and `usage` from the settled lines. Finalizing writes the
output and error files from the settled lines, in input order; it can run again after a crash (the files'
ids are derived from the batch's, so a second run replaces rather than duplicates them).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson

from proxy.config import Config
from proxy.errors import ProxyError
from proxy.jobs import jsonl
from proxy.jobs.work import principal
from proxy.routing.models import ModelCatalog
from proxy.routing.plan import may_use
from proxy.store import Ledger
from proxy.store import batches as store
from proxy.store.batches import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EXPIRED,
    FAILED,
    FINALIZING,
    IN_PROGRESS,
    VALIDATING,
    FileRow,
)

log = logging.getLogger("proxy.batches")
MAX_ERRORS = 100                     # errors.data[] entries kept for a failed validation


def _now() -> int:
    return int(time.time())


class Driver:
    def __init__(self, config: Config, ledger: Ledger, models: ModelCatalog) -> None:
        self.cfg, self.ledger, self.models = config.batches, ledger, models

    async def step(self, key_id: str, doc: dict[str, Any]) -> float:
        """Move the batch on; returns the seconds until it wants looking at again."""
        status = doc["status"]
        if status == VALIDATING:
            await self.validate(key_id, doc)
            return 0.0
        if status == FINALIZING:
            await self.finalize(doc, doc.get("_final") or COMPLETED)
            return 0.0
        c = await store.counts(self.ledger, doc["id"])
        if status == IN_PROGRESS and doc.get("expires_at") and time.time() >= doc["expires_at"]:
            await store.skip_pending(self.ledger, doc["id"])
            c = await store.counts(self.ledger, doc["id"])
            doc["_final"] = EXPIRED
        if status == CANCELLING:
            await store.skip_pending(self.ledger, doc["id"])
            c = await store.counts(self.ledger, doc["id"])
        self._progress(doc, c)
        if c.open == 0:
            final = CANCELLED if status == CANCELLING else doc.get("_final") or COMPLETED
            doc["_final"] = final
            if final == COMPLETED:
                doc["status"], doc["finalizing_at"] = FINALIZING, _now()
                if not await store.save_batch(self.ledger, doc, expect=status):
                    return 0.0
            await self.finalize(doc, final)
            return 0.0
        await store.save_batch(self.ledger, doc, expect=status)
        return self.cfg.progress_interval

    def _progress(self, doc: dict[str, Any], c: store.Counts) -> None:
        doc["request_counts"] = {"total": c.total, "completed": c.completed, "failed": c.failed}
        doc["usage"] = {"input_tokens": c.prompt_tokens, "input_tokens_details": {"cached_tokens": c.cached_tokens},
                        "output_tokens": c.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                        "total_tokens": c.prompt_tokens + c.completion_tokens}
        if doc.get("pause_reason") and time.time() >= doc.get("_paused_until", 0):
            doc["pause_reason"] = None

    async def _fail(self, doc: dict[str, Any], errors: list[dict[str, Any]]) -> None:
        doc.update(status=FAILED, failed_at=_now(), errors={"object": "list", "data": errors[:MAX_ERRORS]})
        await store.save_batch(self.ledger, doc, expect=VALIDATING)

    async def validate(self, key_id: str, doc: dict[str, Any]) -> None:
        text = await store.file_content(self.ledger, doc["input_file_id"])
        if text is None:
            await self._fail(doc, [{"code": "file_not_found", "message": "The input file no longer exists.",
                                    "param": "input_file_id", "line": None}])
            return
        try:
            lines = jsonl.parse(text, self.cfg.max_lines)
            key = await principal(self.ledger, key_id)
        except ProxyError as e:
            line = _line_of(e.message)
            await self._fail(doc, [{"code": e.code, "message": e.message, "param": e.param, "line": line}])
            return
        errors: list[dict[str, Any]] = []
        for ln in lines:
            if ln.url != doc["endpoint"]:
                errors.append({"code": "invalid_url", "line": ln.line_no, "param": "url",
                               "message": f"line {ln.line_no}: url '{ln.url}' differs from the batch's endpoint "
                                          f"'{doc['endpoint']}'"})
                continue
            try:
                model = self.models.resolve(ln.model)
            except ProxyError:
                errors.append({"code": "model_not_found", "line": ln.line_no, "param": "body.model",
                               "message": f"line {ln.line_no}: the model '{ln.model}' does not exist"})
                continue
            if not may_use(key, ln.model, model):
                errors.append({"code": "model_not_allowed", "line": ln.line_no, "param": "body.model",
                               "message": f"line {ln.line_no}: this key may not use model '{ln.model}'"})
        if errors:
            await self._fail(doc, errors)
            return
        await store.add_lines(self.ledger, [(doc["id"], ln.custom_id, ln.line_no, ln.priority,
                                             orjson.dumps(ln.body).decode()) for ln in lines])
        doc.update(status=IN_PROGRESS, in_progress_at=_now(),
                   request_counts={"total": len(lines), "completed": 0, "failed": 0})
        await store.save_batch(self.ledger, doc, expect=VALIDATING)

    async def finalize(self, doc: dict[str, Any], final: str) -> None:
        key_rows = await store.get_batch(self.ledger, doc["id"])
        key_id = key_rows[0] if key_rows else ""
        outs = await store.outputs(self.ledger, doc["id"])
        hexid = doc["id"].removeprefix("batch_")
        for kind, is_error, field in (("output", False, "output_file_id"), ("error", True, "error_file_id")):
            text = "".join(o + "\n" for o, err in outs if err is is_error)
            if not text:
                doc[field] = None
                continue
            fid = f"file-{hexid}{kind[0]}"
            await store.delete_file(self.ledger, fid)
            await store.add_file(self.ledger, FileRow(id=fid, key_id=key_id, filename=f"{doc['id']}_{kind}.jsonl",
                                                      purpose="batch_output", bytes=len(text.encode()),
                                                      created_at=time.time()), text)
            doc[field] = fid
        c = await store.counts(self.ledger, doc["id"])
        self._progress(doc, c)
        prev = doc["status"]
        doc["status"] = final
        doc[{COMPLETED: "completed_at", CANCELLED: "cancelled_at", EXPIRED: "expired_at"}[final]] = _now()
        doc.pop("_final", None)
        doc.pop("_paused_until", None)
        await store.save_batch(self.ledger, doc, expect=prev)


def _line_of(message: str) -> int | None:
    if message.startswith("line "):
        head = message[5:].split(":", 1)[0]
        return int(head) if head.isdigit() else None
    return None


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """The batch object without the driver's private fields."""
    return {k: v for k, v in doc.items() if not k.startswith("_")}
