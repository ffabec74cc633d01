"""Response cache internals: the canonical key and request controls (key.py), the stored entry and its
codec (entry.py), stream <-> JSON conversion for replay (sse.py), and hit/miss counters (stats.py).
The pipeline stage that uses them is proxy/pipeline/cache.py."""
