"""The upload budget: per sender and per client, in a sliding window, and forgetful of the idle."""
from types import SimpleNamespace

from salmon_app.vxcube.budget import UploadBudget, budget_keys


def row(sender, **client):
    return SimpleNamespace(mail_from=sender, client=client)


def test_keys_are_the_sender_and_the_forwarded_client_only():
    assert budget_keys(row("Mallory@X.test", addr="192.0.2.7", peer_ip="127.0.0.1")) == \
        ["sender <mallory@x.test>", "client 192.0.2.7"]
    assert budget_keys(row("", peer_ip="127.0.0.1")) == ["sender <>"]      # the peer is Postfix
    assert budget_keys(row("a@x", addr="[UNAVAILABLE]")) == ["sender <a@x>"]
    assert budget_keys(row("a@x", addr="IPv6:2001:db8::1"))[1] == "client 2001:db8::1"


def test_a_spent_key_blocks_and_the_window_refills_it():
    budget = UploadBudget(limit=2, window=60)
    mallory, other_sender_same_client = ["sender <m>", "client 1"], ["sender <n>", "client 1"]
    assert budget.spend(mallory, 0) and budget.spend(mallory, 1)
    assert not budget.spend(mallory, 2) and budget.exhausted(mallory, 2) == "sender <m>"
    assert not budget.spend(other_sender_same_client, 2)        # rotating senders does not help
    assert budget.spend(["sender <n>", "client 2"], 2)
    assert budget.spend(mallory, 61)                             # the first upload left the window


def test_zero_means_no_limit_and_idle_keys_are_forgotten():
    assert all(UploadBudget(0, 60).spend(["k"], t) for t in range(1000))
    budget = UploadBudget(limit=5, window=10)
    for n in range(100):
        budget.spend(["sender <%d>" % n], 0)
    budget.spend(["sender <late>"], 11)
    assert set(budget.spent) == {"sender <late>"}
