"""The retry heap: order, moves, stale entries, early wake-up."""

import threading
import time

from failured.queue import RetryQueue


def test_pops_in_due_order_and_only_when_due():
    queue = RetryQueue()
    for task_id, due in [(1, 30.0), (2, 10.0), (3, 20.0), (4, 10.0)]:
        queue.push(task_id, due, "t")
    assert queue.pop_due(5.0, 10) == []
    assert [i for i, _, _ in queue.pop_due(20.0, 10)] == [2, 4, 3]
    assert queue.next_due() == 30.0 and len(queue) == 1


def test_push_of_a_known_id_moves_it_and_the_old_entry_is_skipped():
    queue = RetryQueue()
    queue.push(1, 10.0, "t")
    queue.push(1, 50.0, "t")  # postponed
    assert queue.pop_due(20.0, 10) == []
    assert queue.next_due() == 50.0
    assert queue.pop_due(50.0, 10) == [(1, 50.0, "t")]
    assert len(queue) == 0 and not queue.contains(1)


def test_limit_caps_one_pop():
    queue = RetryQueue()
    for i in range(10):
        queue.push(i, float(i), "t")
    assert len(queue.pop_due(100.0, 3)) == 3 and len(queue) == 7


def test_an_earlier_push_wakes_the_waiting_thread():
    queue = RetryQueue()
    queue.push(1, time.time() + 3600, "t")
    woke = threading.Event()

    def waiter():
        with queue.changed:
            queue.changed.wait(timeout=10)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    queue.push(2, time.time(), "t")
    assert woke.wait(2)
    thread.join()


def test_hundred_thousand_entries_keep_order():
    queue = RetryQueue()
    import random

    rng = random.Random(1)
    for i in range(100_000):
        queue.push(i, rng.random() * 60, "t")
    popped = queue.pop_due(60.0, 200_000)
    dues = [d for _, d, _ in popped]
    assert len(popped) == 100_000 and dues == sorted(dues)
