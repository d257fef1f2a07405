"""The transport conformance suite (chan.testing) on every transport, asyncio front end.

The twin of test_conformance.py: each check of ``chan.testing.ACHECKS`` runs with
chan.aio ends over the same pair kinds (pipe, tcp, ipc, inproc, and ends that travelled
in a message), with the same known bugs.  Each test runs its own event loop.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest

import chan
import chan.aio
from chan import testing
from .test_conformance import HOPS, LIMIT, PAD, check_params


def run(main, limit: float = 60.0) -> None:
    """Run ``main()`` on a fresh event loop, failing (not hanging) after ``limit`` s."""
    async def bounded() -> None:
        async with asyncio.timeout(limit):
            await main()
    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def apair_maker(kind: str, **settings):
    base, _, how = kind.partition("+")
    async with testing.open_alink(base, **settings) as link:
        make = link.pair
        if how == "sent-sender":
            make = testing.asent_sender_pair(make)
        elif how == "sent-receiver":
            make = testing.asent_receiver_pair(make)
        yield make


@pytest.mark.parametrize("check,kind", check_params(testing.ACHECKS))
def test_conformance_aio(check: str, kind: str) -> None:
    async def main() -> None:
        async with apair_maker(kind) as make_pair:
            await testing.ACHECKS[check](make_pair)
    run(main)


@pytest.mark.parametrize("ab,bc", HOPS)
def test_forwarding_to_a_third_party_aio(ab: str, bc: str) -> None:
    async def main() -> None:
        async with testing.open_alink(ab) as link_ab, testing.open_alink(bc) as link_bc:
            await testing.acheck_forwarding(link_ab.pair, link_bc.pair)
    run(main)


@pytest.mark.parametrize("ab,bc", HOPS)
def test_forwarding_errors_to_a_third_party_aio(ab: str, bc: str) -> None:
    async def main() -> None:
        async with testing.open_alink(ab) as link_ab, testing.open_alink(bc) as link_bc:
            await testing.acheck_forwarding_errors(link_ab.pair, link_bc.pair)
    run(main)


@pytest.mark.parametrize("kind", testing.SESSION_TRANSPORTS)
@pytest.mark.parametrize("side", ["both", "listener", "connector"])
def test_message_too_large_aio(kind: str, side: str) -> None:
    small = chan.Settings(max_message=LIMIT)
    settings = {"both": dict(settings=small),
                "listener": dict(listener_settings=small),
                "connector": dict(settings=small, listener_settings=chan.Settings())}[side]

    async def main() -> None:
        async with testing.open_alink(kind, **settings) as link:
            await testing.acheck_message_too_large(link.pair, LIMIT)
    run(main)


def test_acheck_transport_runs_every_check() -> None:
    async def main() -> None:
        async with testing.open_alink("inproc") as link:
            await testing.acheck_transport(link.pair)
    run(main)


@pytest.mark.parametrize("kind", [k + how for how in ("", "+sent-receiver")
                                  for k in testing.SESSION_TRANSPORTS])
def test_close_then_session_close_loses_nothing_aio(kind: str) -> None:
    """See test_conformance.test_close_then_session_close_loses_nothing."""
    base, _, how = kind.partition("+")

    async def main() -> None:
        async with testing.open_alink(base) as link:
            make = testing.asent_receiver_pair(link.pair) if how else link.pair
            tx, rx = await make()
            n = 0
            with pytest.raises(chan.Timeout):
                while n < 100_000:
                    await tx.send([n, PAD], timeout=testing.SHORT)
                    n += 1

            async def finish() -> None:
                await tx.close(timeout=testing.WAIT)
                await link.session.close(timeout=testing.WAIT)
            writer = asyncio.ensure_future(finish())
            await asyncio.sleep(4 * testing.SHORT)  # a reader that comes late
            got = [i async for i, _ in rx]
            await asyncio.wait_for(writer, testing.WAIT)
            assert got == list(range(n))
    run(main)


def test_aio_pairs_are_aio_ends() -> None:
    async def main() -> None:
        for kind in testing.TRANSPORTS:
            async with testing.open_alink(kind) as link:
                tx, rx = await link.pair()
                assert isinstance(tx, chan.aio.Sender) and isinstance(rx, chan.aio.Receiver)
    run(main)


def test_the_async_suite_catches_a_transport_without_flow_control() -> None:
    async def unbounded():
        return chan.aio.pipe(capacity=1 << 30)
    with pytest.raises(AssertionError, match="never waited"):
        run(lambda: testing.acheck_flow_control(unbounded, bound=2000))
