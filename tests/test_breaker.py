"""The circuit breaker with an injected clock."""

from failured.breaker import Breakers
from failured.config import BreakerConfig
from failured.store import Breaker


def test_opens_after_n_failures_postpones_probes_once_and_closes(store, clock):
    breakers = Breakers(BreakerConfig(failures=3, cooldown_seconds=300))
    now = clock.now()
    assert breakers.record("sync", False, now) is None
    assert breakers.record("sync", False, now) is None
    assert breakers.record("sync", False, now) == "open"
    assert breakers.allow("sync", now + 10) == (False, now + 300)
    assert breakers.allow("other", now + 10) == (True, None)  # per task type
    clock.advance(300)
    assert breakers.allow("sync", clock.now()) == (True, None)  # the probe
    allowed, until = breakers.allow("sync", clock.now())
    assert not allowed and until > clock.now()  # one probe at a time
    assert breakers.record("sync", True, clock.now()) == "closed"
    assert breakers.allow("sync", clock.now()) == (True, None)


def test_failed_probe_opens_again_for_a_new_cooldown(store, clock):
    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=60))
    assert breakers.record("sync", False, clock.now()) == "open"
    clock.advance(61)
    assert breakers.allow("sync", clock.now())[0]
    assert breakers.record("sync", False, clock.now()) == "open"
    assert breakers.allow("sync", clock.now() + 1) == (False, clock.now() + 60)


def test_state_survives_a_restart(store, clock):
    breakers = Breakers(BreakerConfig(failures=1, cooldown_seconds=60))
    breakers.record("sync", False, clock.now())
    assert Breaker.get_by_id("sync").state == "open"
    again = Breakers(BreakerConfig(failures=1, cooldown_seconds=60))
    again.load()
    assert again.allow("sync", clock.now() + 1)[0] is False


def test_success_resets_the_count(store, clock):
    breakers = Breakers(BreakerConfig(failures=2, cooldown_seconds=60))
    breakers.record("sync", False, clock.now())
    breakers.record("sync", True, clock.now())
    assert breakers.record("sync", False, clock.now()) is None
