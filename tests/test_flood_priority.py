"""Under a flood the retries go first: the intake gives way while a retry waits for the CPU, for as long as
the reports it has yet to decide are young enough. Manual clocks; nothing waits for time to pass."""

from types import SimpleNamespace

import pytest

from failured import daemon as daemon_module
from failured.breaker import Breakers
from failured.config import BreakerConfig
from failured.daemon import Daemon
from failured.handlers import Outcome
from failured.intake import record_failure
from failured.queue import RetryQueue, Runner

QUICK = Outcome(True, duration=0.0001)
SLOW = Outcome(True, duration=30.0)


@pytest.fixture
def engine(sync_engine):
    return sync_engine


def runner_with_one_due(engine, clock, due_in=0.0):
    queue = RetryQueue(clock)
    queue.push(1, clock.now() + due_in, "sync")
    return Runner(engine, queue, Breakers(BreakerConfig(), persist=False, clock=clock), clock, concurrency=4)


def test_the_timer_is_behind_while_a_due_retry_waits_and_there_is_room_to_claim_it(engine, clock):
    assert runner_with_one_due(engine, clock).behind()
    assert not runner_with_one_due(engine, clock, due_in=10.0).behind()  # nothing due yet


def test_a_full_room_of_quick_retries_still_wants_the_cpu_the_intake_would_take(engine, clock):
    runner = runner_with_one_due(engine, clock)
    runner._keep_pace([(None, QUICK)] * 20)
    runner._started(range(100, 100 + runner.claim_limit))  # claimed, waiting for a worker or running
    assert runner.running >= runner.claim_limit
    assert runner.behind()


def test_a_full_room_of_slow_retries_waits_for_its_handlers_and_the_intake_goes_on(engine, clock):
    runner = runner_with_one_due(engine, clock)
    runner._started(range(100, 104))
    assert not runner.behind()  # nothing known of the handlers yet
    runner._keep_pace([(None, SLOW)])
    assert not runner.behind()


def test_retries_disabled_are_never_behind(engine, clock):
    runner = runner_with_one_due(engine, clock)
    runner.enabled = False
    assert not runner.behind()


def test_draining_records_when_the_last_task_decided_was_reported(engine, store, clock):
    assert engine.decided_through is None
    record_failure(store, "sync", "connection timeout 1", clock=clock)
    clock.advance(0.25)
    record_failure(store, "sync", "connection timeout 2", clock=clock)
    reported_last = clock.now()
    clock.advance(3.0)
    assert engine.drain_new(lambda *item: None, between=lambda: None) == 2
    assert engine.decided_through == pytest.approx(reported_last, abs=0.001)  # stored to the millisecond


class _Intake:
    """What ``Daemon._let_late_retries_go`` uses of a daemon: its clock, runner, engine and stop event;
    waiting moves the manual clock on."""

    def __init__(self, clock, behind=True, decided_through=None):
        self.clock = clock
        self.runner = SimpleNamespace(behind=lambda: behind)
        self.engine = SimpleNamespace(decided_through=decided_through)
        self.waited = 0.0
        self.stopping = SimpleNamespace(is_set=lambda: False, wait=self._wait)

    def _wait(self, seconds):
        self.waited += seconds
        self.clock.advance(seconds)
        return False

    def give_way(self):
        Daemon._let_late_retries_go(self)
        return self.waited


def test_the_intake_gives_way_to_a_late_retry_up_to_its_limit_per_commit(clock):
    assert _Intake(clock, decided_through=clock.now()).give_way() == pytest.approx(daemon_module.INTAKE_YIELD_MAX,
                                                                                   abs=0.002)
    assert _Intake(clock, decided_through=None).give_way() == pytest.approx(daemon_module.INTAKE_YIELD_MAX, abs=0.002)
    assert _Intake(clock, behind=False, decided_through=clock.now()).give_way() == 0.0


def test_the_intake_stops_giving_way_when_its_oldest_waiting_report_nears_its_deadline(clock):
    budget = daemon_module.INTAKE_YIELD_BUDGET
    assert _Intake(clock, decided_through=clock.now() - budget).give_way() == 0.0
    assert _Intake(clock, decided_through=clock.now() - budget - 5.0).give_way() == 0.0
    assert _Intake(clock, decided_through=clock.now() - budget + 0.01).give_way() == pytest.approx(0.01, abs=0.002)
