"""Workers that import the app from its source folder, keep each function's variables to
itself, and put a function's environment first on the path (real worker processes)."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import cloudpickle

from multinode_agent.worker import Worker, WorkerPool
from tests.agent import payloads
from tests.agent.conftest import make_job


def reference_job(folder: Path, module: str, qualname: str, *args, **options):
    """A job whose function travels as an import reference into ``folder``."""
    ref = {"format": "mn-import/1", "module": module, "qualname": qualname, "path": str(folder)}
    job = make_job(payloads.add, *args, **options)
    blob = json.dumps(ref).encode()
    return dataclasses.replace(job, blob=blob, blob_hash=f"ref-{folder.name}-{qualname}")


def write_app(folder: Path, body: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "shop.py").write_text(textwrap.dedent(body))
    (folder / "helpers.py").write_text("def tag(x):\n    return f'<{x}>'\n")
    return folder


def test_the_module_is_imported_from_its_folder_with_module_level_objects(
    worker: Worker, tmp_path: Path
) -> None:
    folder = write_app(
        tmp_path / "v1",
        """
        import threading
        from helpers import tag
        import multinode as mn

        LOCK = threading.Lock()

        @mn.function
        def price(x):
            with LOCK:
                return tag(x), __name__
        """,
    )
    outcome = worker.run(reference_job(folder, "shop", "price", "7"), on_logs=lambda _: None)
    assert outcome.status == "succeeded", outcome
    assert cloudpickle.loads(outcome.output) == ("<7>", "shop")


def test_a_new_version_of_the_source_replaces_the_old_modules(
    worker: Worker, tmp_path: Path
) -> None:
    body = "import multinode as mn\n\n@mn.function\ndef version(x):\n    return {v!r}\n"
    old = write_app(tmp_path / "v1", body.format(v="one"))
    new = write_app(tmp_path / "v2", body.format(v="two"))
    first = worker.run(reference_job(old, "shop", "version", 0), on_logs=lambda _: None)
    second = worker.run(reference_job(new, "shop", "version", 0), on_logs=lambda _: None)
    assert cloudpickle.loads(first.output) == "one" and cloudpickle.loads(second.output) == "two"


def test_a_module_that_raises_at_import_fails_the_call_with_its_own_error(
    worker: Worker, tmp_path: Path
) -> None:
    folder = write_app(tmp_path / "v1", "raise RuntimeError('no model server here')\n")
    outcome = worker.run(reference_job(folder, "shop", "anything"), on_logs=lambda _: None)
    assert outcome.status == "failed"
    assert outcome.error.type == "builtins.RuntimeError"
    assert "shop.py" in outcome.error.traceback and "no model server here" in outcome.error.message


def test_variables_of_one_function_never_reach_the_next_functions_call(worker: Worker) -> None:
    names = ("API_KEY", "GREETING")
    first = worker.run(
        make_job(payloads.read_env, *names, env={"API_KEY": "k", "GREETING": "hej"}),
        on_logs=lambda _: None,
    )
    second = worker.run(make_job(payloads.read_env, *names, env={}), on_logs=lambda _: None)
    assert cloudpickle.loads(first.output) == {"API_KEY": "k", "GREETING": "hej"}
    assert cloudpickle.loads(second.output) == {"API_KEY": None, "GREETING": None}


def test_an_exception_with_its_own_init_comes_back_with_its_attributes(worker: Worker) -> None:
    outcome = worker.run(make_job(payloads.scrape, "https://x.test"), on_logs=lambda _: None)
    rebuilt = cloudpickle.loads(outcome.error.pickled)
    assert isinstance(rebuilt, payloads.ScrapeError)
    assert (rebuilt.url, rebuilt.status, str(rebuilt)) == (
        "https://x.test",
        503,
        "https://x.test answered 503",
    )


def test_an_environment_comes_first_and_a_worker_keeps_to_one(tmp_path: Path) -> None:
    env = tmp_path / "env"
    (env / "onlyhere").mkdir(parents=True)
    (env / "onlyhere" / "__init__.py").write_text("WHERE = 'environment'\n")
    folder = write_app(
        tmp_path / "v1",
        """
        import importlib.util
        import multinode as mn

        @mn.function
        def probe():
            found = importlib.util.find_spec("onlyhere")
            return None if found is None else __import__("onlyhere").WHERE
        """,
    )
    pool = WorkerPool(idle_s=60, warm=0, kill_grace_s=0.5)
    try:
        with_env = pool.acquire(environment=str(env))
        outcome = with_env.run(
            reference_job(folder, "shop", "probe", environment=str(env)), on_logs=lambda _: None
        )
        assert cloudpickle.loads(outcome.output) == "environment"
        pool.release(with_env)
        without = pool.acquire(environment=None)
        assert without is not with_env  # a worker with packages never runs a job without them
        outcome = without.run(reference_job(folder, "shop", "probe"), on_logs=lambda _: None)
        assert cloudpickle.loads(outcome.output) is None
        pool.release(without)
        assert pool.acquire(environment=str(env)) is with_env
    finally:
        pool.close()
