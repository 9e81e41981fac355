"""Per-identity token buckets: a burst, then the steady rate, each identity on its own."""

from __future__ import annotations

import pytest

from service.runtime.rate_limit import RateLimiter

pytestmark = pytest.mark.timeout(10)


def test_a_burst_then_one_step_per_interval() -> None:
    limiter = RateLimiter(rate_per_s=10.0, burst=3)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("a", 0.0)
    assert wait == pytest.approx(0.1)
    assert limiter.take("a", 0.05) == pytest.approx(0.05)
    assert limiter.take("a", 0.1) == 0.0  # one token back after 1/rate
    assert limiter.take("a", 0.1) > 0


def test_identities_do_not_share_a_bucket() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=1)
    assert limiter.take("a", 0.0) == 0.0 and limiter.take("a", 0.0) > 0
    assert limiter.take("b", 0.0) == 0.0


def test_idle_time_refills_no_further_than_the_burst() -> None:
    limiter = RateLimiter(rate_per_s=100.0, burst=2)
    limiter.take("a", 0.0)
    taken = [limiter.take("a", 1000.0) for _ in range(3)]
    assert taken[:2] == [0.0, 0.0] and taken[2] > 0


def test_a_clock_read_out_of_order_takes_nothing_away() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2)
    assert limiter.take("a", 5.0) == 0.0
    assert limiter.take("a", 4.0) == 0.0  # another thread's earlier reading
    assert limiter.take("a", 4.0) > 0


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1.0), (1.0, 0.5)])
def test_a_limiter_that_could_never_admit_is_refused(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        RateLimiter(rate, burst)
