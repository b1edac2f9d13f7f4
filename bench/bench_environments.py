"""Environment benchmark on the local cloud: what a deploy with requirements costs, and
what a fresh VM pays to have them, next to installing them on the VM itself.

Deploys the tweet-summaries example (its requirements.txt: fastapi, uvicorn) and measures:

- deploy time with a cold build cache (new control plane, empty uv cache: the build
  downloads every wheel), with a warm build cache (new control plane and database, the
  same uv cache: a build that downloads nothing), and a second deploy of unchanged
  requirements (the environment is reused: nothing is built);
- on a fresh VM, the time from the agent starting the download to the environment being
  unpacked (the agent logs it), against the baseline of doing the same build on the VM
  itself (resolve against the VM's packages, install what they lack; uv, cold cache), as
  a per-node install (Ray's ``runtime_env``) costs every node;
- the size of the packed environment.

With ``--requirements``, a generated app with those requirements (one function that
imports nothing) is measured instead, to see a heavier set such as pandas.

Starts its own local clouds on free ports under temporary MN_HOMEs, and stops them.

    .venv/bin/python bench/bench_environments.py [--requirements "pandas==2.2.3"] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "tweet_summaries" / "tweet_summaries.py"
GENERATED = """
import multinode as mn


@mn.function(cpu=0.25)
def touch():
    return "ok"
"""
READY = re.compile(r"environment (\w+) ready in ([\d.]+)s \(([\d.]+) MiB downloaded in ([\d.]+)s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--requirements", nargs="+", help="measure a generated app with these requirements"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mn-bench-env-"))
    app, function = EXAMPLE, "api"
    if args.requirements:
        app, function = work / "app" / "heavy.py", "touch"
        app.parent.mkdir()
        app.write_text(GENERATED)
        (app.parent / "requirements.txt").write_text("\n".join(args.requirements) + "\n")
    # One build folder (uv's cache) shared by both clouds: the second one's build is warm.
    os.environ["MN_SERVER_BUILD_DIR"] = str(work / "builds")
    for key in ("MN_URL", "MN_API_KEY"):
        os.environ.pop(key, None)
    figures: dict = {}

    with _cloud(work / "home-cold") as (mn, client, home):
        started = time.monotonic()
        info = mn.deploy(app, name="envbench")
        figures["deploy_cold_s"] = time.monotonic() - started
        env_id = {f.name: f.spec.environment for f in info.functions}[function]
        env = client.get_environment(env_id)
        figures["build_cold_s"] = env.build_s
        figures["packed_bytes"] = env.size
        figures["packages"] = env.packages

        started = time.monotonic()
        mn.deploy(app, name="envbench")
        figures["deploy_reused_s"] = time.monotonic() - started

        # A fresh VM downloads the environment: the service's replica, or the call's VM.
        if args.requirements:
            mn.get_function("envbench", function).call()
        else:
            mn.get_service("envbench", "api").wait_ready(timeout=180)
        figures["vm_ready"] = _vm_ready_figures(home, env_id)
        mn.undeploy("envbench")

    with _cloud(work / "home-warm") as (mn, client, _home):
        started = time.monotonic()
        info = mn.deploy(app, name="envbench")
        figures["deploy_warm_s"] = time.monotonic() - started
        env_id = {f.name: f.spec.environment for f in info.functions}[function]
        figures["build_warm_s"] = client.get_environment(env_id).build_s
        mn.undeploy("envbench")

    figures["per_vm_install_s"] = _install_on_the_vm(work, app.parent / "requirements.txt")
    figures["machine"] = (
        f"{platform.node()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    vm = figures["vm_ready"]
    print(
        f"deploy, cold build cache:    {figures['deploy_cold_s']:6.2f} s "
        f"(build {figures['build_cold_s']:.2f} s)"
    )
    print(
        f"deploy, warm build cache:    {figures['deploy_warm_s']:6.2f} s "
        f"(build {figures['build_warm_s']:.2f} s)"
    )
    print(f"deploy, environment reused:  {figures['deploy_reused_s']:6.2f} s")
    print(
        f"fresh VM, environment ready: {vm['ready_s']:6.2f} s "
        f"({vm['mib']:.1f} MiB downloaded in {vm['download_s']:.2f} s)"
    )
    print(
        f"baseline, install on the VM: {figures['per_vm_install_s']:6.2f} s "
        "(uv, cold cache, what every VM pays when each installs for itself)"
    )
    print(
        f"packed environment:          {figures['packed_bytes'] / 1048576:6.2f} MiB "
        f"({len(figures['packages'])} packages: {', '.join(figures['packages'])})"
    )
    print(figures["machine"])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


class _cloud:
    """A local cloud under ``home`` for the length of a ``with`` block."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def __enter__(self):  # type: ignore[no-untyped-def]
        os.environ["MN_HOME"] = str(self.home)
        import multinode as mn
        from multinode import _client, _localcloud

        _client._clients.clear()  # a new cloud: new address and key
        self.config = _localcloud.LocalCloudConfig(
            home=self.home,
            aws_port=free_port(),
            control_plane_port=free_port(),
            gateway_port=free_port(),
            use_existing_aws=False,
        )
        self._localcloud = _localcloud
        _localcloud.up(self.config, echo=lambda _m: None)
        return mn, _client.get_client(), self.home

    def __exit__(self, *exc: object) -> None:
        self._localcloud.down(self.config, echo=lambda _m: None)


def _vm_ready_figures(home: Path, env_id: str) -> dict:
    """What the VM's agent logged when the environment was ready."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for console in (home / "local" / "vms").glob("*/console.log"):
            for match in READY.finditer(console.read_text(errors="replace")):
                if env_id.startswith(match.group(1)):
                    return {
                        "ready_s": float(match.group(2)),
                        "mib": float(match.group(3)),
                        "download_s": float(match.group(4)),
                    }
        time.sleep(0.2)
    raise RuntimeError("no VM logged its environment as ready")


def _install_on_the_vm(work: Path, requirements: Path) -> float:
    """The same build done the per-node way, on the VM: resolve the requirements against
    the VM's own packages and install what they lack, with uv and a cold cache."""
    from uv import find_uv_bin

    from multinode_controlplane.services.base_packages import base_pins

    folder = work / "per-vm"
    folder.mkdir()
    (folder / "base.txt").write_text("".join(f"{n}=={v}\n" for n, v in base_pins().items()))
    env = {**os.environ, "UV_CACHE_DIR": str(work / "cold-cache"), "UV_NO_PROGRESS": "1"}
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    uv = find_uv_bin()
    started = time.monotonic()
    subprocess.run(
        [uv, "pip", "compile", "--quiet", str(requirements),
         "--constraint", "base.txt", "--python-version", python, "--no-header", "--no-annotate",
         "--output-file", "lock.txt"],
        check=True, env=env, cwd=folder,
    )  # fmt: skip
    base = {f"{n}=={v}" for n, v in base_pins().items()}
    lines = (folder / "lock.txt").read_text().splitlines()
    extra = [p.strip() for p in lines if p.strip() and not p.strip().startswith("#")]
    extra = [p for p in extra if p not in base]
    subprocess.run(
        [uv, "pip", "install", "--quiet", "--no-deps", "--target", "site",
         "--python-version", python, *extra],
        check=True, env=env, cwd=folder,
    )  # fmt: skip
    return time.monotonic() - started


if __name__ == "__main__":
    sys.exit(main())
