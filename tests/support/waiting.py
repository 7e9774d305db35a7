"""Waiting on the condition that matters: one polling helper for every test."""
import time


def wait_until(predicate, timeout=30.0, what="condition", interval=0.05):
    """``predicate()``'s first true value within ``timeout`` seconds, else AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    value = predicate()
    if value:
        return value
    raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))
