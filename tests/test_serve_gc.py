"""`serve` settles the garbage collector once the server is up (proxy/cli.py settle_gc)."""

from __future__ import annotations

import subprocess
import sys

from proxy.cli import GC_YOUNG


def test_settle_gc_freezes_start_up_and_spaces_young_collections() -> None:
    """In a fresh interpreter (this one's collector stays as pytest set it): start-up's objects move to
    the permanent generation, and young collections wait for GC_YOUNG allocations, not 700."""
    code = ("import gc; from proxy.cli import settle_gc; before = gc.get_threshold(); settle_gc(); "
            "print(before[0], gc.get_threshold()[0], gc.get_freeze_count(), gc.get_count()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, after, frozen, young = map(int, out)
    assert before == 700 and after == GC_YOUNG > before
    assert frozen > 10_000                      # the modules and objects start-up made
    assert young < 100                          # a full collection ran before the freeze
