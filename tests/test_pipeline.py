"""The stage plumbing: bounded queues that never block a producer, and no lost wake-ups."""
import threading

from salmon_app.pipeline import Registry, Stage, Waiter


def test_a_full_stage_refuses_instead_of_blocking():
    gate = threading.Event()
    stage = Stage("slow", workers=1, size=2, handle=lambda item: gate.wait(5))
    stage.start()
    try:
        results = [stage.submit(n) for n in range(5)]
        assert results.count(True) <= 3 and results[-1] is False   # the producer went on at once
    finally:
        gate.set()
        stage.stop()


def test_news_for_a_held_message_runs_it_again():
    registry = Registry()
    assert registry.hold("Q1")
    assert not registry.hold("Q1")        # e.g. its analyses finished while a worker held it
    assert registry.release("Q1") is True  # so the worker submits it once more
    assert registry.hold("Q1") and registry.release("Q1") is False


def test_waiter_offer_after_timeout_is_refused_and_wake_ends_the_wait():
    waiter = Waiter()
    assert waiter.wait(0.01, on_timeout=lambda: None) is None
    assert not waiter.offer("late")
    other = Waiter()
    threading.Timer(0.05, other.wake).start()
    taken = []
    assert other.wait(10, on_timeout=lambda: taken.append(True)) is None and taken == [True]


def test_wake_does_not_wait_for_an_offer_in_progress():
    """Shut-down wakes every waiting session; one whose reply is being recorded (an offer's
    before(), held up by a slow disk) must not hold the shut-down up."""
    waiter = Waiter()
    recording, release = threading.Event(), threading.Event()

    def slow_record():
        recording.set()
        release.wait(10)
    offering = threading.Thread(target=waiter.offer, args=("250 ok", slow_record))
    offering.start()
    assert recording.wait(10)
    woke = threading.Thread(target=waiter.wake)
    woke.start()
    woke.join(5)
    try:
        assert not woke.is_alive()
    finally:
        release.set()
        offering.join(10)
    assert waiter.wait(0) == "250 ok" and waiter.wait(0) == "250 ok"     # set once, seen by every wait
