"""Jobs end to end on the local cloud: progress while a generator runs, results, errors,
cancellation killing the process, fan-out, undeploy, and `mn jobs`. Every process here is
the real one; tests wait on conditions (files the test creates, statuses), never sleeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

import multinode as mn
from multinode._client import get_client
from multinode.wire import JobStatus
from tests.support.procs import pid_alive, wait_until

pytestmark = pytest.mark.e2e

APP_SOURCE = """
import os
import time
from pathlib import Path

import multinode as mn


def wait_for(path, limit=120):
    deadline = time.monotonic() + limit
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.02)


@mn.function(cpu=0.25, cooldown=120)
def square(x):
    return x * x


@mn.job(cpu=0.25, cooldown=120)
def count_up(n, gates):
    # Yields step i, then waits until the test creates gates/go<i>.
    for i in range(1, n + 1):
        yield {"step": i, "of": n}
        wait_for(Path(gates) / f"go{i}")


@mn.job(cpu=0.25, cooldown=120)
def with_return(n):
    for i in range(n):
        yield i
    return f"{n} rows written"


@mn.job(cpu=0.25, cooldown=120)
async def crawl_async(pages):
    # An async generator job: each value is visible as the others are.
    import asyncio

    for page in range(1, pages + 1):
        await asyncio.sleep(0)
        yield {"page": page}


@mn.job(cpu=0.25, cooldown=120)
def explode():
    yield "read the input"
    raise ValueError("bad row 7")


@mn.job(cpu=0.25, cooldown=120)
def forever(pid_file):
    # Yields as fast as it can, far faster than progress is reported.
    Path(pid_file).write_text(str(os.getpid()))
    i = 0
    while True:
        i += 1
        yield i


@mn.job(cpu=0.25, cooldown=120)
def fan_out(n):
    yield "mapping"
    return sum(square.map(range(n)))


@mn.job(cpu=0.25, cooldown=120, timeout=1)
def too_long():
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def app(local_cloud, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("jobs-app") / "e2e_jobs.py"
    path.write_text(textwrap.dedent(APP_SOURCE))
    name = "e2e-jobs-" + uuid.uuid4().hex[:6]
    info = mn.deploy(path, name=name)
    kinds = {f.name: f.spec.kind for f in info.functions}
    assert kinds["count_up"] == "job" and kinds["square"] == "function"
    return name


def test_a_generators_progress_is_visible_while_it_runs(app: str, tmp_path: Path) -> None:
    count_up = mn.get_job(app, "count_up")
    job_id = count_up.start(3, str(tmp_path))
    assert isinstance(job_id, str)

    for step in (1, 2, 3):
        wait_until(
            lambda step=step: count_up.get(job_id).result == {"step": step, "of": 3},
            timeout=30,
            what=f"step {step} to be visible",
        )
        run = count_up.get(job_id)
        assert run.status is JobStatus.running and not run.done
        assert run.yields == step and run.result_at is not None
        (tmp_path / f"go{step}").touch()

    run = count_up.wait(job_id, timeout=30)
    assert run.status is JobStatus.succeeded
    assert run.result == {"step": 3, "of": 3}  # no return value: the last yielded one
    assert run.error is None
    assert run.started_at is not None and run.finished_at is not None


def test_an_async_generator_job_runs_like_a_plain_one(app: str) -> None:
    crawl = mn.get_job(app, "crawl_async")
    run = crawl.wait(crawl.start(3), timeout=30)

    assert run.status is JobStatus.succeeded
    assert run.result == {"page": 3} and run.yields == 3


def test_a_returned_value_is_the_final_result(app: str) -> None:
    with_return = mn.get_job(app, "with_return")
    job_id = with_return.start(5)
    run = with_return.wait(job_id, timeout=60)
    assert (run.status, run.result, run.yields) == (JobStatus.succeeded, "5 rows written", 5)
    assert with_return.call(2) == "2 rows written"  # .call gives the final result too

    runs = with_return.list()
    assert job_id in {r.id for r in runs} and {r.job for r in runs} == {"with_return"}
    assert job_id in {r.id for r in with_return.list(status="succeeded")}
    assert job_id not in {r.id for r in with_return.list(status="running")}


def test_a_failing_job_reports_its_error_and_keeps_its_progress(app: str) -> None:
    explode = mn.get_job(app, "explode")
    run = explode.wait(explode.start(), timeout=60)
    assert run.status is JobStatus.failed
    assert isinstance(run.error, ValueError) and str(run.error) == "bad row 7"
    assert "in explode" in run.traceback
    assert run.result == "read the input"
    with pytest.raises(ValueError, match="bad row 7"):
        raise run.error


def test_a_job_past_its_timeout_fails_with_a_timeout_error(app: str) -> None:
    too_long = mn.get_job(app, "too_long")
    run = too_long.wait(too_long.start(), timeout=60)
    assert run.status is JobStatus.failed
    assert isinstance(run.error, mn.CallTimeoutError)


def test_cancel_mid_run_ends_the_process_within_seconds(app: str, tmp_path: Path) -> None:
    forever = mn.get_job(app, "forever")
    pid_file = tmp_path / "pid"
    job_id = forever.start(str(pid_file))
    wait_until(
        lambda: pid_file.exists() and forever.get(job_id).result is not None,
        timeout=30,
        what="the job to run and report progress",
    )
    pid = int(pid_file.read_text())
    first = forever.get(job_id).yields
    wait_until(lambda: forever.get(job_id).yields > first, timeout=10, what="more progress")

    started = time.monotonic()
    run = forever.cancel(job_id)
    assert run.status in (JobStatus.cancelling, JobStatus.cancelled)
    wait_until(lambda: not pid_alive(pid), timeout=10, what=f"job process {pid} to end")
    ended_s = time.monotonic() - started
    wait_until(
        lambda: forever.get(job_id).status is JobStatus.cancelled, timeout=10, what="cancelled"
    )
    assert ended_s < 5, f"the job's process took {ended_s:.2f}s to end"
    run = forever.get(job_id)
    assert isinstance(run.result, int) and run.result > 0  # the latest value it reached
    assert run.error is None and run.done


def test_a_job_fans_out_with_map(app: str) -> None:
    fan_out = mn.get_job(app, "fan_out")
    job_id = fan_out.start(30)
    run = fan_out.wait(job_id, timeout=90)
    assert (run.status, run.result) == (JobStatus.succeeded, sum(x * x for x in range(30)))
    nested = [c for c in get_client().list_calls(app=app, limit=500) if c.parent_call_id == job_id]
    assert len(nested) == 30 and {c.function for c in nested} == {"square"}


def test_reading_a_run_with_the_wrong_id_or_handle_says_what_to_do(app: str) -> None:
    count_up = mn.get_job(app, "count_up")
    with pytest.raises(mn.NotFoundError, match="no job"):
        count_up.get("c" + uuid.uuid4().hex)
    call = mn.get_function(app, "square").start(3)
    with pytest.raises(mn.InvalidRequestError, match="not a job") as caught:
        count_up.get(call.id)
    assert "mn.get_call" in str(caught.value)
    with_return = mn.get_job(app, "with_return")
    with pytest.raises(mn.NotFoundError, match="with_return"):
        count_up.get(with_return.start(1))
    with pytest.raises(mn.InvalidRequestError, match="not a job"):
        mn.get_job(app, "square")


def test_undeploy_stops_a_running_job(local_cloud, write_app, app_name, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    path = write_app(
        """
        import os
        import time
        from pathlib import Path
        import multinode as mn

        @mn.job(cpu=0.25, cooldown=60)
        def crawl(pid_file):
            Path(pid_file).write_text(str(os.getpid()))
            for page in range(1_000_000):
                yield page
                time.sleep(0.05)
        """
    )
    mn.deploy(path, name=app_name)
    crawl = mn.get_job(app_name, "crawl")
    job_id = crawl.start(str(pid_file))
    wait_until(
        lambda: pid_file.exists() and crawl.get(job_id).status is JobStatus.running,
        timeout=30,
        what="the job to run",
    )
    pid = int(pid_file.read_text())

    get_client().undeploy(app_name)
    wait_until(lambda: not pid_alive(pid), timeout=10, what=f"job process {pid} to end")
    wait_until(
        lambda: crawl.get(job_id).status is JobStatus.cancelled, timeout=10, what="cancelled"
    )
    assert crawl.get(job_id).reason == "app undeployed"


def test_mn_jobs_lists_runs_and_mn_cancel_stops_one(app: str, tmp_path: Path) -> None:
    def mn_cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "multinode.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "250"},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    with_return = mn.get_job(app, "with_return")
    done_id = with_return.start(4)
    with_return.wait(done_id, timeout=60)
    forever = mn.get_job(app, "forever")
    pid_file = tmp_path / "pid"
    running_id = forever.start(str(pid_file))
    wait_until(lambda: forever.get(running_id).result is not None, timeout=30, what="progress")

    table = mn_cli("jobs", app)
    done_row = next(line for line in table.splitlines() if done_id in line)
    assert "with_return" in done_row and "succeeded" in done_row
    assert "'4 rows written'" in done_row
    running_row = next(line for line in table.splitlines() if running_id in line)
    assert "forever" in running_row and "running" in running_row

    listed = json.loads(mn_cli("jobs", app, "--json"))
    by_id = {item["id"]: item for item in listed}
    assert by_id[done_id]["status"] == "succeeded" and by_id[done_id]["yields"] == 4
    assert all(item["function"] != "square" for item in listed)  # calls are not jobs
    running = json.loads(mn_cli("jobs", app, "--status", "running", "--json"))
    assert running_id in {item["id"] for item in running} and done_id not in {
        item["id"] for item in running
    }

    assert "cancel" in mn_cli("cancel", running_id)
    pid = int(pid_file.read_text())
    wait_until(lambda: not pid_alive(pid), timeout=10, what=f"job process {pid} to end")
    wait_until(
        lambda: forever.get(running_id).status is JobStatus.cancelled,
        timeout=10,
        what="cancelled",
    )
