"""Where per-case and per-fold work runs: in this process (default) or spread over a Ray cluster.

Two kinds of work, one interface:

* ``map_cases(worker, items)``: one call of ``worker`` per item (a case to label or predict).
  The worker is a picklable callable that builds its engine on first use, so each process loads
  a model once and reuses it for every case it is given.
* ``run_tasks(function, argument_tuples)``: independent tasks (one nnU-Net fold each).

Every task writes its results into the run folder itself, atomically (temp name, then rename),
and skips work whose result is already there. So a task that dies with its worker can be retried
(Ray retries it), a run can be resumed after any interruption, and a run can switch executors
between rounds: the files are the same whichever executor wrote them. Ray assumes the run folder,
inputs and weights are on storage every node sees at the same path.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from tqdm import tqdm

from sslmedsam2.errors import UsageError

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")

#: times Ray restarts a dead worker and retries its task before giving up on the case
RETRIES = 3


@dataclass(frozen=True)
class Resources:
    """What one task needs; Ray places tasks by it. ``memory_gb`` None: no reservation."""

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float | None = None

    def ray_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory_gb:
            options["memory"] = int(self.memory_gb * 2**30)
        return options

    def threads(self) -> int:
        return max(1, int(self.cpus))


@dataclass(frozen=True)
class ExecutorConfig:
    """``kind`` local (this machine) or ray; ``workers`` None: 1 locally, as many as fit on Ray."""

    kind: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    task: Resources = Resources()
    #: fold training asks for this (a GPU each when the cluster has them)
    fold_task: Resources = Resources()


class Executor(Protocol):
    name: str
    #: cases run in this process (their log lines appear as they happen)
    runs_here: bool

    def map_cases(self, worker: Callable[[Item], Result], items: Sequence[Item],
                  desc: str = "cases", progress: bool = True,
                  lost: Callable[[Item, str], Result] | None = None,
                  finished: Callable[[Result], None] | None = None) -> list[Result]:
        """``worker(item)`` for every item, results in item order. ``lost(item, why)`` stands in
        for an item whose worker died every time it ran it (default: raise). ``finished(result)``
        runs here as each result arrives (a journal line survives a kill of the run)."""

    def run_tasks(self, function: Callable[..., Result], arguments: Sequence[tuple],
                  desc: str = "tasks") -> list[Result]:
        """``function(*args)`` for every tuple, results in order."""

    def fold_device(self, here: str) -> str:
        """The device a fold task should train on, given the one resolved here."""


class LocalExecutor:
    """This process, one item after another; or a pool of ``workers`` processes for cases.

    Pool processes each keep one copy of the worker (and its engine) for all their items. A pool
    process that dies stops the run; run it again and finished cases are skipped.
    """

    name = "local"

    def __init__(self, workers: int = 1, resources: Resources = Resources()) -> None:
        self.workers = max(1, workers)
        self.resources = resources
        self.runs_here = self.workers == 1

    def map_cases(self, worker, items, desc="cases", progress=True, lost=None, finished=None):
        bar = tqdm(total=len(items), desc=desc, unit="case", file=sys.stderr, disable=not progress,
                   leave=False)
        results: list[Any] = [None] * len(items)
        if self.workers == 1 or len(items) <= 1:
            for index, item in enumerate(items):
                results[index] = _arrived(worker(item), finished, bar)
            bar.close()
            return results
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(
                max_workers=min(self.workers, len(items)), mp_context=context,
                initializer=_install_worker, initargs=(worker, self.resources.threads())) as pool:
            futures = {pool.submit(_run_installed, item): index for index, item in enumerate(items)}
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                results[index] = _arrived(_outcome(future, items[index], lost), finished, bar)
            bar.close()
            return results

    def run_tasks(self, function, arguments, desc="tasks"):
        return [function(*args) for args in arguments]

    def fold_device(self, here: str) -> str:
        return here


# A pool process's worker: set once by the pool's initializer, in that child process only.
_installed: list[Callable[[Any], Any]] = []


def _arrived(result: Any, finished: Callable[[Any], None] | None, bar: tqdm) -> Any:
    if finished is not None:
        finished(result)
    bar.update()
    return result


def _outcome(future: concurrent.futures.Future, item: Any, lost) -> Any:
    try:
        return future.result()
    except concurrent.futures.process.BrokenProcessPool as exc:
        if lost is None:
            raise
        return lost(item, f"worker process died ({exc})")


def _install_worker(worker: Callable[[Any], Any], threads: int) -> None:
    from sslmedsam2.runtime import limit_threads

    limit_threads(threads)
    _installed.append(worker)


def _run_installed(item: Any) -> Any:
    return _installed[0](item)


class RayExecutor:
    """Cases on a pool of Ray actors (one engine each), folds as Ray tasks.

    ``address`` is ``auto`` (the cluster this node belongs to), ``HOST:PORT``, or None: a Ray
    instance started here on this machine's CPUs (and GPUs). A worker that dies is restarted and
    its case retried, up to ``RETRIES`` times.
    """

    name = "ray"
    runs_here = False

    def __init__(self, address: str | None = None, workers: int | None = None,
                 resources: Resources = Resources(), fold_resources: Resources = Resources(),
                 init_options: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UsageError("--executor ray needs Ray: pip install 'sslmedsam2[cluster]' "
                             "(ray==2.60.0)") from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False, **(init_options or {}))
        self.resources = resources
        self.fold_resources = fold_resources
        self.workers = workers or self._fitting_workers(resources)
        log.info("ray: %s; %d worker(s) of %s", ray.cluster_resources(), self.workers, resources)

    def _fitting_workers(self, resources: Resources) -> int:
        available = self._ray.cluster_resources()
        fits = [available.get("CPU", 1) // max(resources.cpus, 1e-3)]
        if resources.gpus:
            fits.append(available.get("GPU", 0) // resources.gpus)
        return max(1, int(min(fits)))

    def map_cases(self, worker, items, desc="cases", progress=True, lost=None, finished=None):
        if not items:
            return []
        ray = self._ray
        actor_class = ray.remote(**self.resources.ray_options(), max_restarts=RETRIES,
                                 max_task_retries=RETRIES)(CaseActor)
        actors = [actor_class.remote(worker, self.resources.threads())
                  for _ in range(min(self.workers, len(items)))]
        try:
            return self._drain(actors, items, desc, progress, lost, finished)
        finally:
            for actor in actors:
                ray.kill(actor, no_restart=True)

    def _drain(self, actors, items, desc, progress, lost, finished):
        """Keep every actor busy with the next item; collect results as they finish."""
        ray = self._ray
        results: list[Any] = [None] * len(items)
        pending: dict[Any, tuple[int, Any]] = {}
        queue = list(enumerate(items))[::-1]
        bar = tqdm(total=len(items), desc=f"{desc} (ray)", unit="case", file=sys.stderr,
                   disable=not progress, leave=False)
        for actor in actors:
            index, item = queue.pop()
            pending[actor.run.remote(item)] = (index, actor)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            index, actor = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # its worker died on every retry
                if lost is None:
                    raise
                result = lost(items[index], f"ray worker lost ({type(exc).__name__})")
            results[index] = _arrived(result, finished, bar)
            if queue:
                next_index, item = queue.pop()
                pending[actor.run.remote(item)] = (next_index, actor)
        bar.close()
        return results

    def run_tasks(self, function, arguments, desc="tasks"):
        ray = self._ray
        remote = ray.remote(**self.fold_resources.ray_options(), max_retries=RETRIES)(function)
        return ray.get([remote.remote(*args) for args in arguments])

    def fold_device(self, here: str) -> str:
        # a worker sees only the GPUs Ray gave it (none unless fold tasks ask for them)
        return "cuda" if self.fold_resources.gpus else "cpu"

    def shutdown(self) -> None:
        self._ray.shutdown()


class CaseActor:
    """One Ray worker process: holds a case worker (and the engine it builds) for many cases."""

    def __init__(self, worker: Callable[[Any], Any], threads: int) -> None:
        from sslmedsam2.runtime import limit_threads

        limit_threads(threads)
        self.worker = worker

    def run(self, item: Any) -> Any:
        return self.worker(item)


def make_executor(config: ExecutorConfig) -> Executor:
    """The executor ``config`` names (``--executor``, ``--workers``, ``--ray-address``)."""
    if config.kind == "local":
        return LocalExecutor(config.workers or 1, config.task)
    if config.kind == "ray":
        return RayExecutor(config.ray_address, config.workers, config.task, config.fold_task)
    raise UsageError(f"unknown executor {config.kind!r} (local or ray)")
