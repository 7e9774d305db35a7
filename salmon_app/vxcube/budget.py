"""How many new vxCube uploads each envelope sender and each client address may cause in a
sliding window (``VxcubeUploadBudget`` per ``VxcubeUploadBudgetWindow``), so that nobody can
spend the licence for everybody: files beyond it are unchecked with the cause ``budget``.
Kept in memory (a restart starts every window afresh); idle keys are forgotten once per
window, so senders that rotate addresses cost memory only for as long as they send.
"""
import collections
import ipaddress
import threading


def budget_keys(row):
    """Who pays for a message's uploads: its envelope sender and the client that sent it
    (XFORWARD only: without it the peer is Postfix, shared by all mail)."""
    keys = ["sender <%s>" % (row.mail_from or "").lower()]
    try:    # Postfix says [UNAVAILABLE] when it does not know: no key then, not a shared one
        keys.append("client %s" % ipaddress.ip_address(str(row.client.get("addr") or "").removeprefix("IPv6:")))
    except ValueError:
        pass
    return keys


class UploadBudget:
    """New uploads per sender and per client in a sliding window, so that nobody can spend
    the vxCube licence for everybody. In memory: a restart starts the window afresh."""

    def __init__(self, limit, window):
        self.limit, self.window = limit, window
        self.spent = collections.defaultdict(collections.deque)   # key -> times of uploads
        self.lock = threading.Lock()
        self.pruned = 0.0

    def _expire(self, key, now):
        times = self.spent[key]
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def exhausted(self, keys, now):
        """The first key that has no upload left, or None."""
        with self.lock:
            return next((k for k in keys if len(self._expire(k, now)) >= self.limit), None)

    def spend(self, keys, now):
        """Take one upload from every key; False (nothing taken) when one of them is spent."""
        if not self.limit:
            return True
        if self.exhausted(keys, now):
            return False
        with self.lock:
            for key in keys:
                self.spent[key].append(now)
            if now - self.pruned > self.window:      # forget senders that went quiet
                self.pruned = now
                for key in [k for k, times in self.spent.items() if not times or times[-1] <= now - self.window]:
                    del self.spent[key]
        return True
