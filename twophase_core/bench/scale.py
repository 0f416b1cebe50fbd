"""Benchmarks of sweeps and scale-out, as ratios measured in one run (the machine is noisy).

- `sweep_seconds` against `sweep_points_one_by_one_seconds`: a sweep whose points share a base run,
  from an empty store, against the same points each run alone from an empty store.
- `ray_overhead_seconds`: per trivial task through twophase's Ray path (a local Ray).
- `ray_scaling_efficiency`: 8 equal chaos rows on a simulated cluster of 2 one-CPU Ray nodes against
  1 one-CPU node, T1 / (2 T2); the base run and Ray's start-up (workers warmed) are not timed.
- `ray_vs_local_sweep`: one sweep through Ray on 2 CPUs against the local job runner with 2 workers
  (TWOPHASE_MAX_JOBS=2), both from an empty store.
- `storage_object_vs_folder`: a small chaos run (every checkpoint written, listed and read back)
  with its checkpoints in an S3 bucket against a folder, min of interleaved rounds. The bucket is an
  S3-compatible server on this machine (moto, a test dependency), so this is the cost of the object
  store path itself (requests, no rename, fresh listings), without a network's latency.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, cast

from twophase_core.experiments.chaos import ChaosConfig
from twophase_core.experiments.presets import preset
from twophase_core.settings import config as conf

if TYPE_CHECKING:
    from twophase_core.experiments.sweep import Sweep

# Equal units of work: tiny data, T = 2,500, t0 = 0..7, so every branch costs about the same (seconds each).
SCALE_CHAOS = conf.replace(cast(ChaosConfig, preset("tiny", "chaos")), iterations=2500, t0=(0, 1, 2, 3, 4, 5, 6, 7),
                           t1=(2500,), n_alpha=5)
SWEEP_VARY = ["eps=1e-7,1e-6,1e-5,1e-4"]


def _sweep() -> Sweep:
    from twophase_core.experiments.sweep import Sweep, parse_vary

    base = conf.replace(preset("tiny", "chaos"), iterations=300, t0=(100, 200, 250), t1=(300,), n_alpha=5)
    return Sweep(base, parse_vary("chaos", SWEEP_VARY))


def bench_sweep() -> dict[str, float]:
    from twophase_core.execution.run import run_experiment
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.sweep import expand
    from twophase_core.storage.store import Store

    sweep = _sweep()
    with tempfile.TemporaryDirectory() as d:
        run_experiment(expand(sweep)[0].config, Store(Path(d) / "warm"))  # imports, data, lockstep's calibration
        t = time.perf_counter()
        run_sweep(sweep, Store(Path(d) / "sweep"))
        together = time.perf_counter() - t
        alone = 0.0
        for k, p in enumerate(expand(sweep)):
            t = time.perf_counter()
            run_experiment(p.config, Store(Path(d) / f"alone{k}"))
            alone += time.perf_counter() - t
    return {"sweep_seconds": together, "sweep_points_one_by_one_seconds": alone,
            "sweep_saving": 1.0 - together / alone}


def bench_demo_sweep() -> dict[str, float]:
    """`twophase sweep chaos --preset demo-sweep` from an empty store, as the CLI runs it (one process per core):
    its wall time, and the CPU time of this process and of the pool's workers (both cores busy: CPU near 2x wall)."""
    from twophase_core.execution import local_pool
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.presets import preset, sweep_replicates
    from twophase_core.experiments.sweep import Sweep
    from twophase_core.storage.store import Store

    sweep = Sweep(preset("demo-sweep", "chaos"), replicates=sweep_replicates("demo-sweep"))
    with tempfile.TemporaryDirectory() as d:
        cpu, t = time.process_time(), time.perf_counter()
        res = run_sweep(sweep, Store(Path(d) / "s"), workers=None)
        wall = time.perf_counter() - t
        cpu = time.process_time() - cpu + (local_pool.last_cpu_seconds if res.meta["workers"] > 1 else 0.0)
    return {"demo_sweep_seconds": wall, "demo_sweep_cpu_seconds": cpu, "demo_sweep_workers": float(res.meta["workers"])}


def _warm(ray: ModuleType, n: int) -> None:
    """Start and warm one worker per CPU (torch imported), so the timing sees tasks, not start-up."""
    def importer(i: int) -> int:
        import torch  # noqa: F401

        from twophase_core.experiments import kind  # noqa: F401

        return i

    task = ray.remote(num_cpus=1)(importer)
    ray.get([task.remote(i) for i in range(4 * n)])


def _time_rows(address: str, n_cpus: int) -> float:
    import ray

    from twophase_core.execution.on_ray import connect, unit_results
    from twophase_core.science.train import Training
    from twophase_core.storage.store import Store

    connect(address)
    _warm(ray, n_cpus)
    with tempfile.TemporaryDirectory() as d:
        store = Store(d)
        training = Training(SCALE_CHAOS.train, store)
        training.base().ensure(sorted(SCALE_CHAOS.t0) + list(SCALE_CHAOS.t1))
        t = time.perf_counter()
        rows = list(unit_results(SCALE_CHAOS, {"how": "loop"}, store.files))
        elapsed = time.perf_counter() - t
        assert len(rows) == len(SCALE_CHAOS.t0)
        store.close()
    ray.shutdown()
    return elapsed


def bench_ray() -> dict[str, float | str]:
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        return {"ray": "not installed (pip install -e '.[ray]')"}
    from twophase_core.execution.on_ray import connect, trivial_overhead

    out: dict[str, float | str] = {}
    connect("")
    out["ray_overhead_seconds"] = trivial_overhead(100)
    ray.shutdown()
    times = {}
    for nodes in (1, 2):
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        try:
            times[nodes] = _time_rows(cluster.address, nodes)
        finally:
            cluster.shutdown()
    out["ray_rows_1_node_seconds"], out["ray_rows_2_nodes_seconds"] = times[1], times[2]
    out["ray_scaling_efficiency"] = times[1] / (2 * times[2])
    out.update(_ray_vs_local())
    return out


def _ray_vs_local() -> dict[str, float]:
    import ray

    from twophase_core.execution.jobs import JobManager
    from twophase_core.execution.sweeps import run_sweep
    from twophase_core.experiments.sweep import expand
    from twophase_core.storage.store import Store

    sweep = _sweep()
    with tempfile.TemporaryDirectory() as d:
        jm = JobManager(Store(Path(d) / "local"), max_running=2)
        t = time.perf_counter()
        ids = [jm.submit(p.config).id for p in expand(sweep)]
        while not all((r := jm.get(i)) is not None and r.finished for i in ids):
            jm.pump()
            time.sleep(0.2)
        local = time.perf_counter() - t
        failed = [i for i in ids if (r := jm.get(i)) is None or r.status != "done"]
        if failed:
            raise RuntimeError(f"local sweep jobs failed: {failed}")
        from twophase_core.execution.on_ray import connect

        connect("")
        _warm(ray, 2)
        t = time.perf_counter()
        run_sweep(sweep, Store(Path(d) / "ray"), executor="ray")
        on_ray = time.perf_counter() - t
        ray.shutdown()
    return {"sweep_local_2_jobs_seconds": local, "sweep_ray_2_cpus_seconds": on_ray,
            "ray_vs_local_sweep": on_ray / local}


def bench_storage(rounds: int = 2) -> dict[str, float | None]:
    """`storage_object_vs_folder` (see the module docstring); None where moto is not installed."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError:
        return {"storage_object_vs_folder": None}
    import fsspec

    from twophase_core.execution.run import run_chaos
    from twophase_core.storage.files import ObjectFiles
    from twophase_core.storage.store import Store

    cfg = conf.replace(preset("demo", "chaos"), iterations=200, t0=(0, 50, 100, 150), t1=(50, 100, 150, 200),
                    perturb_seeds=(0,))  # the demo CNN: 15 checkpoints of 140 KB, 700 SGD steps
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        opts = {"endpoint_url": f"http://{host}:{port}", "key": "bench", "secret": "bench"}
        fsspec.filesystem("s3", **opts).mkdir("bench")
        times: dict[str, list[float]] = {"folder": [], "object": []}
        with tempfile.TemporaryDirectory() as d:
            run_chaos(preset("tiny", "chaos"), Store(Path(d) / "warm"))  # imports, data
            for r in range(rounds):
                for name in times:
                    files = ObjectFiles(f"s3://bench/r{r}", opts) if name == "object" else Path(d) / f"runs{r}"
                    t = time.perf_counter()
                    run_chaos(cfg, Store(Path(d) / f"{name}{r}", storage=files))
                    times[name].append(time.perf_counter() - t)
    finally:
        server.stop()
    return {"storage_folder_seconds": min(times["folder"]), "storage_object_seconds": min(times["object"]),
            "storage_object_vs_folder": min(times["object"]) / min(times["folder"])}

