"""The agent's dispatcher: CPU bounds, batches of one function, give-backs, cancels."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from multinode_agent.dispatch import Dispatcher, Pace


class Recorder:
    """A ``run`` callback that records batches and, while ``hold`` is clear, blocks in them."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.hold = threading.Event()
        self.hold.set()
        self.running = 0
        self.most = 0
        self.started = threading.Semaphore(0)
        self.lock = threading.Lock()
        self.all_done = threading.Condition(self.lock)

    def __call__(self, batch: list[str]) -> None:
        with self.lock:
            self.batches.append(batch)
            self.running += 1
            self.most = max(self.most, self.running)
        self.started.release()
        assert self.hold.wait(10)
        with self.lock:
            self.running -= 1
            self.all_done.notify_all()

    def ran(self) -> list[str]:
        with self.lock:
            return [item for batch in self.batches for item in batch]

    def wait_ran(self, count: int) -> None:
        with self.lock:
            assert self.all_done.wait_for(
                lambda: sum(map(len, self.batches)) >= count and self.running == 0, 10
            ), f"ran {self.batches}, expected {count} items"


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make(recorder: Recorder, *, vcpus: float, limit: int = 1, **kw) -> Dispatcher[str]:  # type: ignore[no-untyped-def]
    return Dispatcher(
        vcpus=vcpus,
        run=recorder,
        batch_limit=lambda _key: limit,
        max_wait_s=kw.pop("max_wait_s", 30.0),
        on_expired=kw.pop("on_expired", lambda _item: None),
    )


@pytest.fixture
def closing() -> Iterator[list[Dispatcher[str]]]:
    made: list[Dispatcher[str]] = []
    yield made
    for dispatcher in made:
        dispatcher.close()


def test_never_runs_more_than_the_cpu_allows(recorder: Recorder, closing: list) -> None:
    dispatcher = make(recorder, vcpus=2)
    closing.append(dispatcher)
    recorder.hold.clear()
    for i in range(6):
        dispatcher.submit(f"c{i}", cpu=1, key=None)
    for _ in range(2):
        assert recorder.started.acquire(timeout=10)

    assert not recorder.started.acquire(timeout=0.2)  # a third would exceed 2 vCPUs
    assert dispatcher.backlog() == 4
    recorder.hold.set()
    recorder.wait_ran(6)
    assert recorder.most == 2 and sorted(recorder.ran()) == [f"c{i}" for i in range(6)]


def test_queued_calls_of_one_function_run_as_one_batch(recorder: Recorder, closing: list) -> None:
    dispatcher = make(recorder, vcpus=1, limit=10)
    closing.append(dispatcher)
    recorder.hold.clear()
    dispatcher.submit("a", cpu=1, key="f")
    assert recorder.started.acquire(timeout=10)
    for item, key in [("b", "f"), ("c", "f"), ("job", None), ("d", "f"), ("e", "g")]:
        dispatcher.submit(item, cpu=1, key=key)

    recorder.hold.set()
    recorder.wait_ran(6)

    # Oldest first; calls of the same function join the batch of the oldest one.
    assert recorder.batches == [["a"], ["b", "c", "d"], ["job"], ["e"]]


def test_a_batch_leaves_other_lanes_their_share(recorder: Recorder, closing: list) -> None:
    dispatcher = make(recorder, vcpus=2, limit=64)
    closing.append(dispatcher)
    recorder.hold.clear()
    dispatcher.submit("whole", cpu=2, key=None)
    assert recorder.started.acquire(timeout=10)
    for i in range(8):
        dispatcher.submit(f"c{i}", cpu=1, key="f")

    recorder.hold.set()
    recorder.wait_ran(9)

    later = [batch for batch in recorder.batches if batch[0].startswith("c")]
    assert max(len(batch) for batch in later) <= 4  # 8 calls over 2 lanes at most
    assert sorted(item for batch in later for item in batch) == [f"c{i}" for i in range(8)]


def test_a_call_waiting_too_long_is_given_back_unstarted(recorder: Recorder, closing: list) -> None:
    expired: list[str] = []
    gone = threading.Event()
    dispatcher = make(
        recorder,
        vcpus=1,
        max_wait_s=0.3,
        on_expired=lambda item: (expired.append(item), gone.set()),
    )
    closing.append(dispatcher)
    recorder.hold.clear()
    dispatcher.submit("long", cpu=1, key=None)
    assert recorder.started.acquire(timeout=10)
    dispatcher.submit("waiting", cpu=1, key=None)

    assert gone.wait(10)
    recorder.hold.set()
    recorder.wait_ran(1)
    assert expired == ["waiting"] and recorder.ran() == ["long"]
    assert dispatcher.backlog() == 0


def test_removed_calls_never_run_and_requeued_ones_run_first(
    recorder: Recorder, closing: list
) -> None:
    dispatcher = make(recorder, vcpus=1)
    closing.append(dispatcher)
    recorder.hold.clear()
    dispatcher.submit("running", cpu=1, key=None)
    assert recorder.started.acquire(timeout=10)
    dispatcher.submit("cancelled", cpu=1, key=None)
    dispatcher.submit("next", cpu=1, key=None)

    assert dispatcher.remove("cancelled") is True
    assert dispatcher.remove("running") is False  # already taken by a lane
    dispatcher.requeue(["back"], cpu=1, key=None)
    recorder.hold.set()
    recorder.wait_ran(3)

    assert recorder.ran() == ["running", "back", "next"]


def test_a_call_larger_than_the_instance_runs_alone_once_it_is_idle(
    recorder: Recorder, closing: list
) -> None:
    dispatcher = make(recorder, vcpus=2)
    closing.append(dispatcher)
    recorder.hold.clear()
    dispatcher.submit("small", cpu=1, key=None)
    assert recorder.started.acquire(timeout=10)
    dispatcher.submit("huge", cpu=16, key=None)

    assert not recorder.started.acquire(timeout=0.2)  # waits for the whole instance
    recorder.hold.set()
    recorder.wait_ran(2)
    assert recorder.ran() == ["small", "huge"] and recorder.most == 1


def test_a_batch_that_raises_gives_its_cpu_back(closing: list) -> None:
    ran: list[str] = []
    second = threading.Event()

    def run(batch: list[str]) -> None:
        ran.extend(batch)
        if batch == ["bad"]:
            raise RuntimeError("a bug in the runner")
        second.set()

    dispatcher = Dispatcher(
        vcpus=1, run=run, batch_limit=lambda _key: 1, max_wait_s=30.0, on_expired=lambda _i: None
    )
    closing.append(dispatcher)
    dispatcher.submit("bad", cpu=1, key=None)
    dispatcher.submit("next", cpu=1, key=None)

    assert second.wait(10)  # the instance's only vCPU was released after the failure
    assert ran == ["bad", "next"]


def test_the_slowest_function_run_lately_decides_the_pace() -> None:
    now = [0.0]
    pace = Pace(0.5, memory_s=60.0, clock=lambda: now[0])
    assert not pace.short()  # nothing run yet: no prefetch, no batches

    pace.record("tiny", 0.001)
    assert pace.short() and pace.short("tiny") and pace.mean() == 0.001
    pace.record("long", 20.0)
    # Tiny calls still batch, but the instance no longer holds extra calls of any kind.
    assert pace.short("tiny") and not pace.short("long") and not pace.short()

    now[0] = 61.0  # "long" has not run for a minute
    pace.record("tiny", 0.001)
    assert pace.short()
    pace.reset()  # a give-back: calls are not short here after all
    assert not pace.short() and not pace.short("tiny")
