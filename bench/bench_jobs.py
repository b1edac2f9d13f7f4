"""Jobs on the local cloud: how soon a yielded value is visible, how soon a cancelled
job's process is gone, and what a generator yielding flat out costs.

Starts its own local cloud on free ports under a temporary MN_HOME, deploys two jobs,
measures, and stops everything.

    .venv/bin/python bench/bench_jobs.py [--rounds 10] [--json out.json]

Figures: progress latency (yield → visible through ``job.get``), cancel latency
(``job.cancel`` → the job's process has exited; → status ``cancelled``), and the yields
per second of a generator yielding flat out (each value pickled at its yield).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import free_port, percentile

APP_SOURCE = """
import os
import time
from pathlib import Path

import multinode as mn


@mn.job(cpu=0.25, cooldown=600)
def stepper(gates, n):
    # Yields the wall time of each step, then waits for the bench to open the next gate.
    for i in range(n):
        yield (i, time.time())
        deadline = time.monotonic() + 60
        while not Path(gates, str(i)).exists() and time.monotonic() < deadline:
            time.sleep(0.001)


@mn.job(cpu=0.25, cooldown=600)
def spin(pid_file, seconds):
    Path(pid_file).write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        yield i
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="progress steps and cancels")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="mn-bench-"))
    os.environ["MN_HOME"] = str(home)
    for key in ("MN_URL", "MN_API_KEY"):
        os.environ.pop(key, None)

    import multinode as mn
    from multinode import _localcloud
    from multinode._deploy import deploy

    config = _localcloud.LocalCloudConfig(
        home=home,
        aws_port=free_port(),
        control_plane_port=free_port(),
        gateway_port=free_port(),
        use_existing_aws=False,
    )
    _localcloud.up(config, echo=lambda _m: None)
    figures: dict = {
        "machine": f"{platform.node()} {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    try:
        # A folder of its own: the app's folder is uploaded, and MN_HOME never is.
        app_file = Path(tempfile.mkdtemp(prefix="mn-bench-app-")) / "bench_jobs_app.py"
        app_file.write_text(textwrap.dedent(APP_SOURCE))
        deploy(app_file, name="bench-jobs")
        stepper, spin = mn.get_job("bench-jobs", "stepper"), mn.get_job("bench-jobs", "spin")
        figures["progress_latency_ms"] = {
            # Steps closer together than the 0.5 s progress interval wait for it (by design).
            "back_to_back_steps": progress_latency(stepper, home / "gates-0", args.rounds, 0.0),
            "steps_1s_apart": progress_latency(stepper, home / "gates-1", args.rounds, 1.0),
        }
        figures["cancel"] = cancel_latency(spin, home, args.rounds)
        run = spin.wait(spin.start(str(home / "flat-out.pid"), 3.0), timeout=60)
        figures["flat_out_yields_per_s"] = round(run.result / 3.0)
    finally:
        _localcloud.down(config, echo=lambda _m: None)

    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


def progress_latency(stepper, gates: Path, rounds: int, spacing_s: float) -> dict:  # type: ignore[no-untyped-def]
    """Yield → visible: the job yields its wall time; the bench polls ``get`` until it sees
    that step (every 5 ms, which bounds the resolution), then lets the job go on to the
    next step ``spacing_s`` later."""
    gates.mkdir()
    job_id = stepper.start(str(gates), rounds + 1)
    latencies = []
    for i in range(rounds + 1):
        while True:
            run = stepper.get(job_id)
            if run.result is not None and run.result[0] == i:
                seen = time.time()
                break
            time.sleep(0.005)
        if i > 0:  # the first step also waits for the instance to boot
            latencies.append((seen - run.result[1]) * 1000)
        time.sleep(spacing_s)
        (gates / str(i)).touch()
    stepper.wait(job_id, timeout=60)
    return _summary(latencies)


def cancel_latency(spin, home: Path, rounds: int) -> dict:  # type: ignore[no-untyped-def]
    """``cancel`` → the process is gone, and → ``cancelled``, for a job yielding flat out."""
    from multinode import JobStatus

    gone, cancelled = [], []
    for i in range(rounds):
        pid_file = home / f"spin-{i}.pid"
        job_id = spin.start(str(pid_file), 600.0)
        while not (pid_file.exists() and spin.get(job_id).result is not None):
            time.sleep(0.01)
        pid = int(pid_file.read_text())
        t0 = time.perf_counter()
        spin.cancel(job_id)
        gone_at = status_at = None
        while gone_at is None or status_at is None:
            if gone_at is None and not _alive(pid):
                gone_at = time.perf_counter()
            if status_at is None and spin.get(job_id).status is JobStatus.cancelled:
                status_at = time.perf_counter()
            time.sleep(0.002)
        gone.append((gone_at - t0) * 1000)
        cancelled.append((status_at - t0) * 1000)
    return {"process_gone_ms": _summary(gone), "status_cancelled_ms": _summary(cancelled)}


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _summary(values: list[float]) -> dict:
    return {
        "p50": round(statistics.median(values), 1),
        "p95": round(percentile(values, 0.95), 1),
        "max": round(max(values), 1),
        "n": len(values),
    }


if __name__ == "__main__":
    sys.exit(main())
