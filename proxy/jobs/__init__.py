"""Async jobs and batches: stored in the ledger, run by workers in every gateway process through the same
pipeline as live calls (`Gateway.call_whole`), each leaving exactly one usage event.

    jsonl.py     the batch input file, checked line by line
    work.py      one job, one batch line: the call, and what its outcome means
    driver.py    a batch's life: validate -> in_progress -> finalizing -> completed (or failed, cancelled)
    webhooks.py  Standard Webhooks deliveries, retried with backoff
    runner.py    the worker loop: leases, slots, progress, drain
"""
