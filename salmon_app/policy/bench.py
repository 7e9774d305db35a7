"""A small latency measurement of a hook, for the benchmark and the test suite.

``measure`` runs the hook ``n`` times on one message, as a worker would, and reports the
median and 99th percentile of ``run`` in seconds: of ``HookRuntime.run`` in this process, or
with ``isolated=True`` of ``HookProcess.run`` (the daemon's path: the message goes to the
worker's hook process and the Decision comes back).
"""
import statistics
import time

from .context import Envelope
from .process import HookProcess
from .runtime import HookRuntime


def measure(hook_spec, raw, n=1000, analysis=None, isolated=False):
    runtime = (HookProcess if isolated else HookRuntime)(hook_spec)
    envelope = Envelope("sender@example.org", ["rcpt@example.com"], helo="mx.example.org",
                        client={"hostname": "mx.example.org", "ip": "192.0.2.1", "port": 25},
                        queue_id="BENCH")
    try:
        runtime.run(envelope, raw, analysis or {})   # warm-up: caches, first allocations
        times = []
        for _ in range(n):
            start = time.perf_counter()
            runtime.run(envelope, raw, analysis or {})
            times.append(time.perf_counter() - start)
    finally:
        if isolated:
            runtime.close()
    cuts = statistics.quantiles(times, n=100, method="inclusive")
    return {"p50": cuts[49], "p99": cuts[98], "n": n}
