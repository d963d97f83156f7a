"""The retry heap: order, moves, stale entries, early wake-up."""

import random
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
    waiting = threading.Event()

    def now():
        # wait_until_due asks for the time holding the queue's lock and keeps it until it
        # waits: once "waiting" is set, a push (which takes that lock) cannot come too early
        waiting.set()
        return time.time()

    thread = threading.Thread(target=queue.wait_until_due, args=(now, 3600), daemon=True)
    thread.start()
    assert waiting.wait(60)
    queue.push(2, time.time(), "t")
    thread.join(60)  # only the push's wake-up ends a wait of up to an hour
    assert not thread.is_alive()


def test_many_entries_with_moves_keep_order():
    # order at scale with stale entries mixed in; bench/retry_timer.py runs 100,000 through a daemon
    queue = RetryQueue()
    rng = random.Random(1)
    due = {}
    for i in range(20_000):
        due[i] = rng.random() * 60
        queue.push(i, due[i], "t")
    for i in rng.sample(range(20_000), 5_000):  # moved: each leaves a stale entry behind
        due[i] = rng.random() * 60
        queue.push(i, due[i], "t")
    popped = queue.pop_due(60.0, 100_000)
    assert [(i, d) for i, d, _ in popped] == sorted(due.items(), key=lambda item: (item[1], item[0]))[:len(popped)]
    assert len(popped) == 20_000 and len(queue) == 0
