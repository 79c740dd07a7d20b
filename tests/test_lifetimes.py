"""The shutdown order of `Lifetimes` (pure unit tests: no server, no socket).

Components register their stops in start order; the stops run by phase (intake of every
interface before any finishes, the API after the work, NATS and the server last), each
bounded by the shutdown deadline, and a step cut short does not stop the later phases.
"""

from __future__ import annotations

import asyncio

from router.service import Lifetimes, Stopper


async def test_stops_run_by_phase_whatever_the_registration_order() -> None:
    done: list[str] = []
    stops = Lifetimes()

    def step(what: str) -> Stopper:
        async def stop(_left: float) -> None:
            await asyncio.sleep(0)
            done.append(what)
        return stop

    stops.on_stop("server", "server", step("server"))
    stops.on_stop("nats", "nats", step("nats"))
    stops.on_stop("routes", "routes", step("routes"))
    for name in ("a", "b"):
        stops.on_stop("intake", f"intake {name}", step(f"intake {name}"))
        stops.on_stop("finish", f"finish {name}", step(f"finish {name}"))
    stops.on_stop("parity", "parity", step("parity"))
    stops.on_stop("api", "api", step("api"))
    await stops.close(10)
    assert done[:2] == ["intake a", "intake b"] and sorted(done[2:4]) == ["finish a", "finish b"], done
    assert done[4:] == ["api", "parity", "routes", "nats", "server"], done
    assert stops.abandoned == []
    await stops.close(10)  # a second close has nothing left to stop
    assert len(done) == 9


async def test_a_step_past_the_deadline_is_abandoned_and_closing_still_gets_its_minimum() -> None:
    given: dict[str, float] = {}
    stops = Lifetimes()

    async def forever(_left: float) -> None:
        await asyncio.Event().wait()

    async def close(left: float) -> None:
        given["nats"] = left

    stops.on_stop("finish", "finish slow", forever)
    stops.on_stop("nats", "close NATS", close)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await stops.close(0.4)
    assert stops.abandoned == ["finish slow"]
    assert given["nats"] >= 1.0, given  # past the deadline, closing still gets its minimum
    assert loop.time() - started < 5
