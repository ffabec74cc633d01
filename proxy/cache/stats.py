"""Hit / miss counters by (model, namespace). The metrics exporter reads `snapshot()`."""

from __future__ import annotations

OUTCOMES = ("hit", "miss", "bypass", "store", "error")


class CacheStats:
    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], dict[str, int]] = {}

    def add(self, model: str, ns: str, outcome: str) -> None:
        row = self.counts.get((model, ns))
        if row is None:
            row = self.counts[(model, ns)] = dict.fromkeys(OUTCOMES, 0)
        row[outcome] += 1

    def total(self, outcome: str) -> int:
        return sum(row[outcome] for row in self.counts.values())

    def snapshot(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for (model, ns), row in sorted(self.counts.items()):
            looked = row["hit"] + row["miss"]
            out.append({"model": model, "namespace": ns, **row,
                        "hit_rate": round(row["hit"] / looked, 4) if looked else 0.0})
        return out
