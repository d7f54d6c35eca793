"""Executors: cases and folds on a local process pool or a Ray instance started here give the same
files as the default in-process run, also when a Ray worker dies in the middle of a case."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import ray
import SimpleITK as sitk
import torch

from sslmedsam2.engines.atlas import AtlasEngine
from sslmedsam2.executors import LocalExecutor, RayExecutor, Resources
from sslmedsam2.pseudo_label import CaseLabeller, Query, find_queries, pseudo_label
from sslmedsam2.registration.label_propagation import AtlasConfig
from sslmedsam2.runtime import limit_threads
from sslmedsam2.supports import Support, find_supports
from sslmedsam2.training.supervised import PROFILES, fit_nnunet


@pytest.fixture(scope="module")
def local_ray():
    """A Ray instance of this test's own: 2 CPUs, a small object store, no dashboard."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=80 * 2**20,
             log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def queries(example_dataset) -> list[Query]:
    return (find_queries(example_dataset.train_dir, "GED4")
            + find_queries(example_dataset.test_input_dir, "GED4"))


@pytest.fixture(scope="module")
def recipe(example_dataset):
    # the affine: ANTs' SyN is multi-threaded and not bit-reproducible between processes
    return partial(AtlasEngine, find_supports(example_dataset.train_dir)[:1],
                   AtlasConfig(method="affine"), max_supports=1)


@pytest.fixture(scope="module")
def local_labels(tmp_path_factory, queries, recipe) -> Path:
    """The reference: every case labelled in this process, one worker thread like the others."""
    out = tmp_path_factory.mktemp("local")
    with _single_threaded():
        records = pseudo_label(CaseLabeller(recipe, out, "GED4"), queries, progress=False)
    assert [r["status"] for r in records] == ["ok"] * len(queries)
    return out


def test_process_pool_gives_the_same_labels(tmp_path, queries, recipe, local_labels):
    executor = LocalExecutor(workers=2)
    records = pseudo_label(CaseLabeller(recipe, tmp_path, "GED4"), queries, progress=False,
                           executor=executor)
    assert [r["status"] for r in records] == ["ok"] * len(queries)
    _assert_same_outputs(tmp_path, local_labels, queries)


class HoldingLabeller(CaseLabeller):
    """A case labeller that notes which process starts each case (``<starts>/<case>.<pid>``)
    and holds the first attempt at case ``held`` until the test kills it: the test learns the
    worker's pid from the worker itself, so it kills a worker of its own Ray instance, mid-case,
    and nothing else on the machine."""

    def __init__(self, *args, starts: Path, held: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.starts, self.held = starts, held

    def __call__(self, query: Query) -> dict:
        first = not any(self.starts.glob(f"{query.case}.*"))
        (self.starts / f"{query.case}.{os.getpid()}").touch()
        if query.case == self.held and first:
            time.sleep(120)  # the test kills this process long before
            raise RuntimeError(f"worker {os.getpid()} holding {query.case} was never killed")
        return super().__call__(query)


def test_ray_survives_a_killed_worker_and_gives_the_same_labels(tmp_path, local_ray, queries,
                                                                recipe, local_labels):
    executor = RayExecutor(workers=2, resources=Resources(cpus=1))
    starts = tmp_path / "starts"
    starts.mkdir()
    held = queries[len(queries) // 2].case  # sent once a worker has labelled a case already
    labeller = HoldingLabeller(recipe, tmp_path / "out", "GED4", starts=starts, held=held)
    records: list[dict] = []
    # Ray's workers cannot import this test module: send the labeller's class by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    run = threading.Thread(target=lambda: records.extend(
        pseudo_label(labeller, queries, progress=False, executor=executor)))
    run.start()
    try:
        victim = _pid_starting(starts, held, deadline=time.monotonic() + 300)
        assert victim != os.getpid(), "the case ran in this process, not on a Ray worker"
        os.kill(victim, signal.SIGKILL)  # a crash: Ray restarts the worker and retries its case
        run.join(timeout=600)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert not run.is_alive()
    assert [r["status"] for r in records] == ["ok"] * len(queries)
    # the held case really was retried: started by the killed worker, then by its replacement
    retried_by = {int(mark.suffix[1:]) for mark in starts.glob(f"{held}.*")}
    assert victim in retried_by and len(retried_by) == 2, retried_by
    _assert_same_outputs(tmp_path / "out", local_labels, queries)
    # resuming on another executor redoes nothing
    again = pseudo_label(labeller, queries, progress=False)
    assert {r["status"] for r in again} == {"skipped"}


def test_ray_trains_two_folds_like_the_local_executor(tmp_path, local_ray, example_dataset):
    cases = [Support(c.case_id, c.images["GED4"], c.ground_truth["GED4"], c.vendor)
             for c in example_dataset.cases]
    assert len(cases) >= 5  # nnU-Net's 5-fold split needs five cases
    profile = replace(PROFILES["tiny-test"], folds=("0", "1"))
    cpu = torch.device("cpu")
    with _single_threaded():
        local = fit_nnunet(cases, tmp_path / "local", profile, "GED4", 501, cpu, 1, seed=11)
    remote = fit_nnunet(cases, tmp_path / "ray", profile, "GED4", 501, cpu, 1, seed=11,
                        executor=RayExecutor(fold_resources=Resources(cpus=1)))
    for fold in profile.folds:
        ours = torch.load(remote / f"fold_{fold}" / "checkpoint_final.pth", weights_only=False)
        reference = torch.load(local / f"fold_{fold}" / "checkpoint_final.pth", weights_only=False)
        assert ours["network_weights"].keys() == reference["network_weights"].keys()
        for name, tensor in reference["network_weights"].items():
            torch.testing.assert_close(ours["network_weights"][name], tensor, msg=name)


def _pid_starting(starts: Path, case: str, deadline: float) -> int:
    """The process id of the worker that has started ``case`` (as it noted in ``starts``)."""
    while time.monotonic() < deadline:
        marks = list(starts.glob(f"{case}.*"))
        if marks:
            return int(marks[0].suffix[1:])
        time.sleep(0.05)
    raise AssertionError(f"no Ray worker started case {case}")


@contextlib.contextmanager
def _single_threaded() -> Iterator[None]:
    """One torch and ITK thread in this process, as each 1-CPU worker has."""
    torch_threads = torch.get_num_threads()
    itk_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    limit_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(torch_threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)


def _assert_same_outputs(out: Path, reference: Path, queries: list[Query]) -> None:
    for query in queries:
        for name in ("GED4.nii.gz", "GED4_uncertainty.nii.gz"):
            ours = sitk.ReadImage(str(out / query.case / name))
            theirs = sitk.ReadImage(str(reference / query.case / name))
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours),
                                          sitk.GetArrayViewFromImage(theirs), err_msg=name)
            assert ours.GetOrigin() == theirs.GetOrigin() and ours.GetSpacing() == theirs.GetSpacing()


def test_cli_batch_prediction_on_ray_matches_local(tmp_path, local_ray, trained_weights,
                                                   example_dataset):
    """``pseudo-label --method nnunet``: a trained ensemble over many cases, here and on Ray."""
    from sslmedsam2.cli import main

    common = ["pseudo-label", "--method", "nnunet", "--weights", str(trained_weights),
              "--device", "cpu", "--unlabelled", str(example_dataset.test_input_dir), "-q",
              "--threaded-registration"]  # nothing registers; keeps this process unpinned
    with _single_threaded():  # float sums depend on the thread count; each worker has one
        assert main([*common, "--out", str(tmp_path / "local")]) == 0
    assert main([*common, "--out", str(tmp_path / "ray"), "--executor", "ray",
                 "--workers", "2"]) == 0
    queries = find_queries(example_dataset.test_input_dir, "GED4")
    _assert_same_outputs(tmp_path / "ray", tmp_path / "local", queries)
    for query in queries:  # on the input's grid
        image = sitk.ReadImage(str(query.image))
        mask = sitk.ReadImage(str(tmp_path / "ray" / query.case / "GED4.nii.gz"))
        assert mask.GetSize() == image.GetSize() and mask.GetDirection() == image.GetDirection()


def test_cli_refuses_bad_executor_options(tmp_path, example_dataset):
    from sslmedsam2.cli import main

    base = ["pseudo-label", "--unlabelled", str(example_dataset.test_input_dir),
            "--out", str(tmp_path), "-q", "--threaded-registration"]
    assert main([*base, "--method", "nnunet"]) == 1  # no --weights
    assert main([*base, "--supports", str(example_dataset.train_dir), "--workers", "0"]) == 1


def test_a_bad_case_on_workers_is_named_here_and_loses_nothing(tmp_path, queries, recipe, caplog):
    broken = tmp_path / "in" / "broken" / "GED4.nii.gz"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a volume")
    cases = [Query("broken", broken), queries[0]]
    with caplog.at_level("ERROR", logger="sslmedsam2"):
        records = pseudo_label(CaseLabeller(recipe, tmp_path / "out", "GED4"), cases,
                               progress=False, executor=LocalExecutor(workers=2))
    assert [r["status"] for r in records] == ["error", "ok"]
    assert str(broken) in records[0]["error"]
    assert any(str(broken) in message for message in caplog.messages)  # logged by the driver
    assert not (tmp_path / "out" / "broken" / "GED4.nii.gz").exists()
    assert (tmp_path / "out" / queries[0].case / "GED4.nii.gz").is_file()
