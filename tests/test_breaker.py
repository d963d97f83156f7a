"""The circuit breaker with an injected clock."""

import threading

from failured.breaker import Breakers
from failured.config import BreakerConfig
from failured.store import Breaker


def test_opens_after_n_failures_postpones_probes_once_and_closes(store, clock):
    breakers = Breakers(BreakerConfig(failures=3, cooldown_seconds=300), store, clock=clock)
    now = clock.now()
    assert breakers.record("sync", False) is None
    assert breakers.record("sync", False) is None
    assert breakers.record("sync", False) == "open"
    clock.advance(10)
    assert breakers.allow("sync") == (False, now + 300)
    assert breakers.allow("other") == (True, None)  # per task type
    clock.advance(290)
    assert breakers.allow("sync") == (True, None)  # the probe
    allowed, until = breakers.allow("sync")
    assert not allowed and until > clock.now()  # one probe at a time
    assert breakers.record("sync", True) == "closed"
    assert breakers.allow("sync") == (True, None)


def test_failed_probe_opens_again_for_a_new_cooldown(store, clock):
    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=60), store, clock=clock)
    assert breakers.record("sync", False) == "open"
    clock.advance(61)
    assert breakers.allow("sync")[0]
    assert breakers.record("sync", False) == "open"
    assert breakers.allow("sync") == (False, clock.now() + 60)


def test_state_survives_a_restart(store, clock):
    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=60), store, clock=clock)
    breakers.record("sync", False)
    assert Breaker.get_by_id("sync").state == "open"
    assert Breaker.get_by_id("sync").open_until == clock.now() + 60  # stored on the wall clock
    again = Breakers(BreakerConfig(failures=1, cooldown_seconds=60), store, clock=clock)
    again.load()
    clock.advance(1)
    assert again.allow("sync")[0] is False


def test_success_resets_the_count(store, clock):
    breakers = Breakers(BreakerConfig(failures=2, cooldown_seconds=60), store, clock=clock)
    breakers.record("sync", False)
    breakers.record("sync", True)
    assert breakers.record("sync", False) is None


def test_wall_clock_jumps_neither_shorten_nor_stretch_the_cooldown(sqlite_store, clock):
    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=60), sqlite_store, clock=clock)
    breakers.record("sync", False)
    clock.jump(3600)  # the system clock set an hour forward
    assert breakers.allow("sync")[0] is False
    clock.jump(-7200)  # and an hour back
    clock.advance(61)
    assert breakers.allow("sync")[0] is True


def test_concurrent_records_leave_the_last_state_in_the_table(store, clock):
    breakers = Breakers(BreakerConfig(failures=1_000_000, cooldown_seconds=60), store, clock=clock)

    def fail_many():
        for _ in range(200):
            breakers.record("sync", False)

    threads = [threading.Thread(target=fail_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert Breaker.get_by_id("sync").consecutive_failures == 800


def test_status_shows_an_open_breaker_past_its_cooldown_as_cooled_not_open_until_a_time_gone(store, clock):
    from failured import status

    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=60), store, clock=clock)
    assert breakers.record("sync", False) == "open"  # the retry that used up a task's attempts, say
    [shown] = status.collect(store, None, clock.now())["breakers_open"]
    assert shown["state"] == "open"
    clock.advance(61)  # no retry of this type comes: nothing probes
    data = status.collect(store, None, clock.now())
    assert data["breakers_open"][0]["state"] == "cooled"
    assert "breaker cooled down: sync (the next retry of this type probes)" in status.render(data)


def test_a_breaker_that_opens_again_says_how_many_failed_in_a_row_and_which_task_tipped_it(store, clock):
    from failured.notify.messages import breaker_message

    breakers = Breakers(BreakerConfig(failures=3, cooldown_seconds=30), store, clock=clock)
    for _ in range(3):
        breakers.record("sync", False)
    clock.advance(31)
    assert breakers.allow("sync") == (True, None)  # the probe
    assert breakers.record("sync", False) == "open"  # failed: open again, the fourth in a row
    assert breakers.failures("sync") == 4
    title, body = breaker_message("zh", "sync", True, breakers.failures("sync"), 30, task_id=9)
    assert "连续 4 次" in title and "- 任务: #9 (`failured show 9`)" in body
