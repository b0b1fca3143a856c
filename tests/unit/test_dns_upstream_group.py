"""The upstream group on a virtual clock: in-memory upstreams scripted per query, timing asserted exactly.

Every test runs on `VirtualClockLoop`, whose clock jumps to the next timer, so "the first upstream had half
the budget" is an equality, not a wall-clock window. The group's health clock and latency timer are the
loop's clock too, so latencies and backoffs are exact as well.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest
from dnslib import RCODE, DNSRecord

from dnsguard.dns.upstream_errors import (
    AllUpstreamsFailedError,
    UpstreamBusyError,
    UpstreamError,
    UpstreamTimeoutError,
)
from dnsguard.dns.upstream_health import HealthPolicy, Outcome
from dnsguard.dns.upstream_select import Strategy
from dnsguard.errors import ConfigError, FormError
from dnsguard.net.upstream import UpstreamGroup
from dnsguard.net.upstream.fake import (
    Answer,
    Busy,
    Failure,
    FakeUpstream,
    Silence,
    VirtualClockLoop,
    run_on_virtual_clock,
)
from tests.unit.test_dns_upstream import answer_of, make_query, reply_id

START = 1000.0  # the virtual clock's reading when each test begins


def run(main: Callable[[VirtualClockLoop], Awaitable[None]]) -> None:
    run_on_virtual_clock(main, start=START)


def group_on(loop: VirtualClockLoop, upstreams: list[FakeUpstream], **kwargs: object) -> UpstreamGroup:
    """A group whose health clock and latency timer are the loop's virtual clock."""
    return UpstreamGroup(upstreams, clock=loop.time, timer=loop.time, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------
# Strict and failover


def test_strict_asks_in_order_and_fails_over_after_half_the_budget() -> None:
    first = FakeUpstream("first", Answer("192.0.2.1"), Silence())
    second = FakeUpstream("second", default=Answer("192.0.2.2", delay=0.03))

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [first, second], strategy="strict", timeout=1.0) as group:
            assert answer_of(await group.query(make_query("one.test"))) == "192.0.2.1"
            assert second.queries == []
            started = loop.time()
            reply = await group.query(make_query("two.test", query_id=77))
            elapsed = loop.time() - started
            stats = group.stats()
        assert answer_of(reply) == "192.0.2.2"
        assert reply_id(reply) == 77
        assert elapsed == pytest.approx(0.5 + 0.03)  # the first upstream had half the budget
        assert first.queries[1].timeout == pytest.approx(0.5)
        assert second.queries[0].timeout == pytest.approx(0.5)  # half the budget, less than the time left
        assert [query.name for query in second.queries] == ["two.test"]
        assert (stats[0].queries, stats[0].timeouts, stats[0].consecutive_failures) == (2, 1, 1)
        assert stats[0].last_error is not None and "no reply" in stats[0].last_error
        assert (stats[1].queries, stats[1].failures) == (1, 0)
        assert stats[1].latency_ewma == pytest.approx(0.03)

    run(main)


def test_servfail_fails_over_but_is_returned_when_everyone_says_so() -> None:
    first = FakeUpstream("first", default=Answer(rcode=RCODE.SERVFAIL))
    second = FakeUpstream("second", Answer("192.0.2.2"), default=Answer(rcode=RCODE.REFUSED))

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [first, second], strategy="strict") as group:
            assert answer_of(await group.query(make_query("a.test"))) == "192.0.2.2"
            last_resort = await group.query(make_query("b.test", query_id=5))
            stats = group.stats()
        assert DNSRecord.parse(last_resort).header.rcode == RCODE.SERVFAIL
        assert reply_id(last_resort) == 5
        assert stats[0].servfails == 2
        # SERVFAIL is about the name, not the upstream: no backoff. REFUSED is about the upstream.
        assert stats[0].backoff_until == 0.0
        assert stats[1].backoff_until == START + 1.0

    run(main)


def test_all_upstreams_failing_raises_with_every_error() -> None:
    upstreams = [FakeUpstream("a", default=Failure("port unreachable")), FakeUpstream("b", default=Failure())]

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, upstreams, strategy="strict", timeout=1.0) as group:
            with pytest.raises(AllUpstreamsFailedError) as caught:
                await group.query(make_query())
        assert [error.upstream for error in caught.value.errors] == ["a", "b"]
        assert "port unreachable" in str(caught.value)
        assert loop.time() == START  # failures that come at once cost no waiting

    run(main)


def test_group_deadline_bounds_the_whole_query() -> None:
    upstreams = [FakeUpstream("a", default=Silence()), FakeUpstream("b", default=Silence())]

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, upstreams, strategy="strict", timeout=0.3, attempt_timeout=0.2) as group:
            with pytest.raises(AllUpstreamsFailedError) as caught:
                await group.query(make_query())
        assert loop.time() - START == pytest.approx(0.3)
        # The second attempt got only what the deadline left of its 0.2 s.
        assert [query.timeout for query in upstreams[1].queries] == [pytest.approx(0.1)]
        assert all(isinstance(error, UpstreamTimeoutError) for error in caught.value.errors)

    run(main)


def test_no_attempt_starts_once_the_deadline_has_passed() -> None:
    upstreams = [FakeUpstream("slow", default=Failure(delay=0.2)), FakeUpstream("never", default=Answer())]

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, upstreams, strategy="strict", timeout=0.2, attempt_timeout=0.2) as group:
            with pytest.raises(AllUpstreamsFailedError):
                await group.query(make_query())
        assert upstreams[1].queries == []

    run(main)


def test_a_busy_upstream_is_skipped_without_counting_against_its_health() -> None:
    busy = FakeUpstream("busy", Busy())
    spare = FakeUpstream("spare", default=Answer("192.0.2.2"))
    calls: list[tuple[str, float, Outcome]] = []

    async def main(loop: VirtualClockLoop) -> None:
        group = group_on(loop, [busy, spare], strategy="strict", on_query=lambda *call: calls.append(call))
        async with group:
            assert answer_of(await group.query(make_query())) == "192.0.2.2"
            stats = group.stats()
        assert (stats[0].busy, stats[0].failures, stats[0].backoff_until) == (1, 0, 0.0)
        assert [(name, outcome) for name, _, outcome in calls] == [
            ("busy", Outcome.BUSY),
            ("spare", Outcome.OK),
        ]

    run(main)


# ------------------------------------------------------------------------------------------------------------
# Racing and random choice


def test_parallel_best_returns_the_fast_answer_and_abandons_the_slow_one() -> None:
    slow = FakeUpstream("slow", default=Answer("192.0.2.1", delay=0.5))
    fast = FakeUpstream("fast", default=Answer("192.0.2.2", delay=0.01))
    calls: list[tuple[str, float, Outcome]] = []

    async def main(loop: VirtualClockLoop) -> None:
        group = group_on(
            loop, [slow, fast], strategy=Strategy.PARALLEL_BEST, on_query=lambda *c: calls.append(c)
        )
        async with group:
            reply = await group.query(make_query())
            elapsed = loop.time() - START
        assert answer_of(reply) == "192.0.2.2"
        assert elapsed == pytest.approx(0.01)
        assert len(slow.queries) == len(fast.queries) == 1  # both were asked, at the same moment
        assert slow.queries[0].at == fast.queries[0].at == START
        assert slow.cancelled == 1
        assert calls == [("fast", pytest.approx(0.01), Outcome.OK)]

    run(main)


def test_parallel_best_takes_the_good_answer_over_a_quick_servfail() -> None:
    servfail = FakeUpstream("servfail", default=Answer(rcode=RCODE.SERVFAIL))
    good = FakeUpstream("good", default=Answer("192.0.2.2", delay=0.1))

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [servfail, good], strategy="parallel_best") as group:
            reply = await group.query(make_query())
        assert answer_of(reply) == "192.0.2.2"
        assert loop.time() - START == pytest.approx(0.1)

    run(main)


def test_random_spreads_queries_by_weight_and_fails_over() -> None:
    first = FakeUpstream("first", default=Answer("192.0.2.1", delay=0.002))
    second = FakeUpstream("second", default=Answer("192.0.2.2", delay=0.002))

    async def main(loop: VirtualClockLoop) -> None:
        group = group_on(
            loop, [first, second], strategy="random", coalesce=False, rng=random.Random(1), timeout=0.4
        )
        async with group:
            for n in range(40):
                await group.query(make_query(f"n{n}.test"))
            # Both answer in the same time, so both get a fair share.
            assert len(first.queries) >= 8 and len(second.queries) >= 8
            assert len(first.queries) + len(second.queries) == 40
            first.default = Silence()
            for n in range(6):
                assert answer_of(await group.query(make_query(f"m{n}.test"))) == "192.0.2.2"

    run(main)


def test_random_prefers_the_faster_upstream() -> None:
    quick = FakeUpstream("quick", default=Answer("192.0.2.1", delay=0.001))
    sluggish = FakeUpstream("sluggish", default=Answer("192.0.2.2", delay=0.2))

    async def main(loop: VirtualClockLoop) -> None:
        group = group_on(loop, [quick, sluggish], strategy="random", coalesce=False, rng=random.Random(7))
        async with group:
            for n in range(100):
                await group.query(make_query(f"n{n}.test"))
        # Weights 1/(0.001+0.01) against 1/(0.2+0.01): about 19 to 1.
        assert len(quick.queries) >= 85
        assert len(sluggish.queries) >= 1  # still measured now and then

    run(main)


# ------------------------------------------------------------------------------------------------------------
# Health: backoff and its end


def test_dead_upstream_backs_off_and_is_retried_later() -> None:
    dead = FakeUpstream("dead", default=Failure("port unreachable"))
    alive = FakeUpstream("alive")
    policy = HealthPolicy(backoff_initial=1.0, backoff_max=4.0)

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [dead, alive], strategy="strict", health=policy) as group:

            def dead_stats() -> tuple[int, int, float]:
                stats = group.stats()[0]
                return stats.queries, stats.consecutive_failures, stats.backoff_until

            async def at(now: float, name: str) -> None:
                await asyncio.sleep(now - loop.time())
                await group.query(make_query(name))

            await at(1000.0, "a.test")
            assert dead_stats() == (1, 1, 1001.0)
            await at(1000.5, "b.test")
            assert dead_stats() == (1, 1, 1001.0)  # resting: not asked
            await at(1001.0, "c.test")
            assert dead_stats() == (2, 2, 1003.0)  # asked again, failed again: twice the backoff
            for now in (1003.0, 1007.0):
                await at(now, f"{now}.test")
            assert dead_stats() == (4, 4, 1011.0)  # capped at backoff_max
            assert len(alive.queries) == 5

    run(main)


def test_parallel_best_does_not_race_a_resting_upstream() -> None:
    dead = FakeUpstream("dead", default=Failure())
    alive = FakeUpstream("alive", default=Answer("192.0.2.2"))

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [dead, alive], strategy="parallel_best") as group:
            for n in range(5):
                assert answer_of(await group.query(make_query(f"q{n}.test"))) == "192.0.2.2"
            assert group.stats()[0].queries == 1  # raced once, failed, then left alone while backing off
            await asyncio.sleep(1.0)
            await group.query(make_query("later.test"))
            assert group.stats()[0].queries == 2  # back in the race once its backoff is over

    run(main)


def test_resting_upstreams_are_still_a_last_resort() -> None:
    only = FakeUpstream("only", Silence())

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [only], timeout=0.4) as group:
            with pytest.raises(AllUpstreamsFailedError):
                await group.query(make_query())
            assert group.stats()[0].backoff_until > loop.time()
            assert answer_of(await group.query(make_query())) == "192.0.2.1"
            assert group.stats()[0].consecutive_failures == 0

    run(main)


# ------------------------------------------------------------------------------------------------------------
# Coalescing and bounds


def test_identical_queries_in_flight_are_coalesced() -> None:
    upstream = FakeUpstream("only", default=Answer(delay=0.1))

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [upstream]) as group:
            same = [
                make_query("Burst.Example.Test" if n == 7 else "burst.example.test", query_id=n)
                for n in range(30)
            ]
            other_type = make_query("burst.example.test", "AAAA", query_id=99)
            replies = await asyncio.gather(*(group.query(wire) for wire in [*same, other_type]))
        assert [reply_id(reply) for reply in replies] == [*range(30), 99]
        assert [DNSRecord.parse(query.wire).q.qtype for query in upstream.queries] == [1, 28]
        # Each asker sees its own spelling of the name (case-randomising stubs check it).
        assert str(DNSRecord.parse(replies[7]).q.qname) == "Burst.Example.Test."
        assert str(DNSRecord.parse(replies[8]).q.qname) == "burst.example.test."

    run(main)


def test_coalescing_keeps_edns_and_dnssec_queries_apart() -> None:
    upstream = FakeUpstream("only", default=Answer(delay=0.1))
    queries = [
        make_query(query_id=1),
        make_query(query_id=2, edns=""),
        make_query(query_id=3, edns=""),
        make_query(query_id=4, edns="do"),
    ]

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [upstream]) as group:
            replies = await asyncio.gather(*(group.query(wire) for wire in queries))
        assert [reply_id(reply) for reply in replies] == [1, 2, 3, 4]
        assert (
            len(upstream.queries) == 3
        )  # no EDNS, EDNS, EDNS with DO; the two plain EDNS queries shared one

    run(main)


def test_a_cancelled_asker_does_not_cancel_the_others() -> None:
    upstream = FakeUpstream("only", default=Answer(delay=0.1))

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [upstream]) as group:
            impatient = asyncio.ensure_future(group.query(make_query(query_id=1)))
            patient = asyncio.ensure_future(group.query(make_query(query_id=2)))
            await asyncio.sleep(0.02)
            impatient.cancel()
            reply = await patient
        assert reply_id(reply) == 2
        assert len(upstream.queries) == 1
        assert upstream.cancelled == 0

    run(main)


def test_when_every_asker_gives_up_the_upstream_query_is_cancelled() -> None:
    upstream = FakeUpstream("only", Answer(delay=0.1))

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [upstream]) as group:
            asker = asyncio.ensure_future(group.query(make_query(query_id=1)))
            await asyncio.sleep(0.02)
            asker.cancel()
            await asyncio.sleep(0)
            # A later identical query starts afresh rather than joining the cancelled flight.
            reply = await group.query(make_query(query_id=2))
        assert reply_id(reply) == 2
        assert upstream.cancelled == 1
        assert len(upstream.queries) == 2

    run(main)


def test_a_failing_hook_does_not_break_resolution() -> None:
    def broken_hook(name: str, duration: float, outcome: Outcome) -> None:
        raise RuntimeError("metrics backend down")

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [FakeUpstream("only")], on_query=broken_hook) as group:
            assert answer_of(await group.query(make_query())) == "192.0.2.1"

    run(main)


@pytest.mark.parametrize("coalesce", [True, False])
def test_group_bounds_queries_in_flight(coalesce: bool) -> None:
    upstream = FakeUpstream("only", default=Answer(delay=0.1))

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [upstream], max_in_flight=2, coalesce=coalesce) as group:
            results = await asyncio.gather(
                *(group.query(make_query(f"d{n}.test")) for n in range(3)), return_exceptions=True
            )
            # Once those have landed there is room again.
            assert answer_of(await group.query(make_query("e.test"))) == "192.0.2.1"
        assert [type(result) for result in results] == [bytes, bytes, UpstreamBusyError]
        assert len(upstream.queries) == 3  # the refused query reached no upstream

    run(main)


def test_a_malformed_query_is_the_callers_form_error_and_reaches_no_upstream() -> None:
    upstream = FakeUpstream("only")

    async def main(loop: VirtualClockLoop) -> None:
        async with group_on(loop, [upstream]) as group:
            with pytest.raises(FormError):
                await group.query(make_query()[:-3])
        assert upstream.queries == []

    run(main)


def test_close_cancels_flights_and_closes_every_upstream() -> None:
    upstreams = [FakeUpstream("a", default=Silence()), FakeUpstream("b")]

    async def main(loop: VirtualClockLoop) -> None:
        group = group_on(loop, upstreams, strategy="strict")
        asker = asyncio.ensure_future(group.query(make_query()))
        await asyncio.sleep(0.1)
        await group.close()
        with pytest.raises(asyncio.CancelledError):
            await asker
        assert [upstream.closed for upstream in upstreams] == [1, 1]
        assert upstreams[0].cancelled == 1

    run(main)


def test_group_rejects_bad_configuration() -> None:
    with pytest.raises(ConfigError, match="at least one upstream"):
        UpstreamGroup([])
    with pytest.raises(ConfigError, match="unknown strategy 'fastest'"):
        UpstreamGroup([FakeUpstream("a")], strategy="fastest")


# ------------------------------------------------------------------------------------------------------------
# The fake itself: it must fail the way real transports do, or the tests above prove nothing


def test_fake_upstream_times_out_and_fails_like_a_transport() -> None:
    upstream = FakeUpstream("x", Silence(), Answer(delay=0.5), Failure("reset", delay=0.1), Busy())

    async def main(loop: VirtualClockLoop) -> None:
        with pytest.raises(UpstreamTimeoutError):
            await upstream.query(make_query(), 0.3)
        assert loop.time() == pytest.approx(START + 0.3)
        with pytest.raises(UpstreamTimeoutError):
            await upstream.query(make_query(), 0.3)  # an answer later than the timeout never arrives
        assert loop.time() == pytest.approx(START + 0.6)
        with pytest.raises(UpstreamError, match="reset"):
            await upstream.query(make_query(), 0.3)
        assert loop.time() == pytest.approx(START + 0.7)
        with pytest.raises(UpstreamBusyError):
            await upstream.query(make_query(), 0.3)
        reply = await upstream.query(make_query(query_id=0x4242), 0.3)
        assert reply_id(reply) == 0x4242 and answer_of(reply) == "192.0.2.1"
        assert DNSRecord.parse(reply).header.qr == 1
        assert [query.at for query in upstream.queries] == pytest.approx(
            [START, START + 0.3, START + 0.6, START + 0.7, START + 0.7]
        )

    run(main)


def test_virtual_clock_refuses_to_wait_forever() -> None:
    async def main(loop: VirtualClockLoop) -> None:
        await loop.create_future()  # nothing will ever resolve it, and no timer is due

    with pytest.raises(RuntimeError, match="no timer is due"):
        run(main)
