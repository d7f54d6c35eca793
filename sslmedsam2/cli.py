"""``sslmedsam2 <command>``: the command line over the library. Heavy imports stay inside commands
so ``--help`` answers instantly."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from sslmedsam2.container.budget import DEFAULT_BUDGET_S
from sslmedsam2.errors import SSLMedSAM2Error, UsageError

if TYPE_CHECKING:
    from sslmedsam2.ssl.config import SSLConfig

log = logging.getLogger("sslmedsam2")

CONTAINER_MODEL_DIR = Path("/opt/ml/model")
#: the sub-command registry of ``build_parser`` (argparse keeps its type private)
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: ``datasets.chaos.SEQUENCES``' names, here so that ``--help`` need not import SimpleITK
CHAOS_SEQUENCES = ("T2SPIR", "T1DUAL-in", "T1DUAL-out")


def setup_logging(verbose: bool = False) -> None:
    """Our log lines at INFO on stderr; other libraries only at WARNING unless --verbose, and
    their deprecation warnings only with --verbose (run logs keep them)."""
    from sslmedsam2.logs import ConsoleFilter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    if not verbose:
        handler.addFilter(ConsoleFilter())
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    log.setLevel(logging.DEBUG if verbose else logging.INFO)


def default_weights_dir() -> Path:
    """``$SSLMEDSAM2_WEIGHTS``, else ``/opt/ml/model`` (Grand Challenge) if present, else ``./weights``."""
    if os.environ.get("SSLMEDSAM2_WEIGHTS"):
        return Path(os.environ["SSLMEDSAM2_WEIGHTS"])
    if CONTAINER_MODEL_DIR.is_dir():
        return CONTAINER_MODEL_DIR
    return Path("weights")


def _sequence_list(text: str) -> tuple[str, ...]:
    from sslmedsam2.sequences import normalise_sequence

    try:
        return tuple(normalise_sequence(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _fold_list(text: str) -> tuple[str, ...]:
    return tuple(f.strip() for f in text.split(",") if f.strip())


INFER_DESCRIPTION = (
    "Segment the liver in every volume of --input and write uint8 0/1 masks with exactly the "
    "input's size, spacing, origin and direction to --output. A bad case is logged, recorded in "
    "sslmedsam2-summary.json and skipped; the exit code is 1 if any case failed, 2 if the input "
    "could not be read as any layout.")


DETERMINISTIC_HELP = ("ANTs registrations (atlas, averaged engines) on one thread, so that a rerun "
                      "writes the same masks to the last bit (the default). On a Ray cluster started "
                      "elsewhere, set ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1 on its nodes instead")
THREADED_HELP = ("ANTs registrations on every CPU: faster per registration (1.5x on 2 cores), but "
                 "a rerun can write different masks, on hard cases by several Dice points")


def add_registration_threads(parser: argparse.ArgumentParser) -> None:
    """``--deterministic`` (the default) or ``--threaded-registration``; None: not said."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--deterministic", dest="deterministic", action="store_true", default=None,
                       help=DETERMINISTIC_HELP)
    group.add_argument("--threaded-registration", dest="deterministic", action="store_false",
                       help=THREADED_HELP)


def infer_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The container entrypoint's parser (process.py uses it as is)."""
    parser = argparse.ArgumentParser(prog=prog, description=INFER_DESCRIPTION)
    add_infer_arguments(parser)
    return parser


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the container entrypoint (process.py) and of ``sslmedsam2 infer``."""
    parser.set_defaults(func=run_infer)
    io = parser.add_argument_group("input and output")
    io.add_argument("--input", type=Path, default=Path("/input"),
                    help="CARE folder (<Vendor>/<case>/<SEQ>.nii.gz [+ info.csv]), Grand Challenge "
                         "folder (inputs.json + images/<slug>/*.mha), a folder of volumes or one "
                         "volume (.nii/.nii.gz/.mha/.mhd/.nrrd). Default: /input")
    io.add_argument("--output", type=Path, default=Path("/output"),
                    help="where masks and sslmedsam2-summary.json go. Default: /output")
    io.add_argument("--weights", type=Path, default=None,
                    help="weights folder (see weights/README.md). Default: $SSLMEDSAM2_WEIGHTS, "
                         "else /opt/ml/model if present, else ./weights")
    what = parser.add_argument_group("what to segment")
    what.add_argument("--sequences", type=_sequence_list, default=None,
                      help="CARE: comma-separated sequences to segment besides GED4 (each must have "
                           "a model). Default: GED4 plus every sequence a model exists for")
    what.add_argument("--sequence", type=_sequence_list, default=None, dest="default_sequence",
                      help="sequence of Grand Challenge / plain inputs, which do not name it "
                           "(selects the model). Default: the weights' only sequence when they "
                           "were trained on one (e.g. a plain collection's T2), else GED4")
    what.add_argument("--gc-input-slug", default=None,
                      help="Grand Challenge image socket to read. Default: the only image socket")
    what.add_argument("--gc-output-slug", default="liver-segmentation",
                      help="Grand Challenge output socket. Default: liver-segmentation")
    what.add_argument("--all-components", action="store_true",
                      help="keep every connected component (default: only the largest, the liver)")
    how = parser.add_argument_group("how to run the model")
    how.add_argument("--engines", type=lambda t: tuple(t.split(",")), default=None,
                     help="engines tried in this order for each sequence: nnunet (trained models), "
                          "sam2 (few-shot from <weights>/supports with a checkpoint in "
                          "<weights>/sam2), atlas (registration of the supports), average "
                          "(mean of nnunet's and atlas's liver probability, for the supports' "
                          "sequence: a registration per case on top of the model). Default: the "
                          "chain the weights' manifest names (an SSL run's: average,nnunet,sam2,"
                          "atlas), else nnunet,sam2,atlas")
    how.add_argument("--device", default="auto", help="auto (GPU if visible), cpu or cuda[:N]")
    how.add_argument("--fast", action="store_true", help="no mirroring test-time augmentation")
    how.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                     help="mirroring TTA (8x cost). Default: on with a GPU, off on CPU")
    how.add_argument("--folds", type=_fold_list, default=None,
                     help="folds to ensemble, e.g. 0,1,2,3,4 or all. Default: every fold on a GPU, "
                          "one on CPU")
    how.add_argument("--configuration", default=None,
                     help="nnU-Net configuration (2d, 3d_fullres, ...). Default: 3d_fullres on a "
                          "GPU, 2d on CPU when the weights hold one")
    how.add_argument("--time-budget", type=float, default=DEFAULT_BUDGET_S, metavar="SECONDS",
                     help="per-case time a segmentation may take: before each case the cost is "
                          "estimated from costs measured at load; nnU-Net drops TTA, then folds, "
                          "SAM2 drops insertions, then supports, until it fits, and hands the case "
                          "to the next engine (atlas) when nothing fits (all logged and in the "
                          f"summary). 0 = no limit. Default: {DEFAULT_BUDGET_S:.0f} "
                          "(a 20-minute platform limit, less loading and a margin)")
    how.add_argument("--threads", type=int, default=None,
                     help="CPU threads for torch. Default: every CPU this process may use for "
                          "nnU-Net and atlas, 1 for SAM2 on CPU (faster on a shared box)")
    add_registration_threads(how)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def infer_settings(args: argparse.Namespace):
    """Command-line options -> InferenceSettings (the only place options become settings)."""
    from sslmedsam2.container.inference import InferenceSettings
    from sslmedsam2.container.layouts import GrandChallengeSlugs
    from sslmedsam2.engines import RuntimeOptions

    tta = False if args.fast else args.tta
    return InferenceSettings(
        input_path=args.input, output_dir=args.output,
        weights_dir=args.weights or default_weights_dir(), engines=args.engines,
        runtime=RuntimeOptions(device=args.device, tta=tta, folds=args.folds,
                               configuration=args.configuration, threads=args.threads,
                               time_budget=args.time_budget or None),
        sequences=args.sequences,
        default_sequence=args.default_sequence[0] if args.default_sequence else None,
        slugs=GrandChallengeSlugs(input_slug=args.gc_input_slug, output_slug=args.gc_output_slug),
        largest_component=not args.all_components)


def pin_unless_threaded(args: argparse.Namespace) -> None:
    """One ANTs thread unless ``--threaded-registration``; must act before any registration loads
    ANTs in this process. Asked for explicitly and too late: an error; by default: a warning."""
    from sslmedsam2.registration.syn import pin_registration_threads

    if args.deterministic is False or pin_registration_threads():
        return
    if args.deterministic:
        raise UsageError("--deterministic: ANTs was loaded before the option could take effect")
    log.warning("ANTs was loaded before its threads could be pinned: registrations run threaded, "
                "reruns may differ")


def run_infer(args: argparse.Namespace) -> int:
    from sslmedsam2.container.inference import run_inference

    pin_unless_threaded(args)
    return run_inference(infer_settings(args)).exit_code


def run_evaluate(args: argparse.Namespace) -> int:
    from sslmedsam2.evaluation.folders import evaluate_folders, failures, summary_table, write_csv

    if (args.images or args.worst) and not args.montages:
        raise UsageError("--images and --worst shape --montages' pictures; give --montages DIR too")
    if args.worst is not None and args.worst < 1:
        raise UsageError(f"--worst must be at least 1, got {args.worst}")
    results = evaluate_folders(args.pred, args.gt, progress=not args.quiet, sequences=args.sequences)
    if args.out:
        write_csv(results, args.out)
        log.info("per-case results written to %s", args.out)
    print(summary_table(results))
    if args.montages:
        from sslmedsam2.evaluation.case_montages import save_case_montages
        from sslmedsam2.evaluation.folders import labelled_collection

        collection = labelled_collection(args.gt)
        pictures = save_case_montages(
            results, args.montages, args.images, progress=not args.quiet, worst=args.worst,
            images_by_case={s.case: s.image for s in collection.labelled} if collection else None)
        log.info("%d overlay picture(s), worst Dice first, in %s", len(pictures), args.montages)
    problems = failures(results, args.min_dice)
    for problem in problems:
        log.error("%s", problem)
    return 1 if problems else 0


def run_make_example(args: argparse.Namespace) -> int:
    from sslmedsam2.datasets.example import ExampleConfig, make_example

    dataset = make_example(ExampleConfig(
        out_dir=args.out, cases=args.cases, test_cases=args.test_cases,
        labelled_per_vendor=args.labelled_per_vendor, seed=args.seed,
        variability=args.variability), progress=not args.quiet)
    log.info("example dataset in %s: %d training cases (%d labelled) in %s, test input in %s, "
             "ground truth in %s", dataset.root, args.cases,
             sum(c.labelled for c in dataset.cases), dataset.train_dir.name,
             dataset.test_input_dir.relative_to(dataset.root),
             dataset.ground_truth_dir.relative_to(dataset.root))
    return 0


def run_train(args: argparse.Namespace) -> int:
    from sslmedsam2.executors import make_executor
    from sslmedsam2.logs import run_log
    from sslmedsam2.ssl.config import TEMPLATE
    from sslmedsam2.ssl.pipeline import pin_registrations, read_choices, run_ssl, run_summary_table

    if args.print_config:
        sys.stdout.write(TEMPLATE)
        return 0
    config = _train_config(args)
    if args.dry_run:
        from sslmedsam2.ssl.plan import describe_plan

        print(describe_plan(config))
        return 0
    pin_registrations(config)  # before a Ray instance started here inherits the environment
    with run_log(Path(args.run) / "train.log"):
        result = run_ssl(config, args.run, args.weights, progress=not args.quiet,
                         executor=make_executor(executor_config(args)))
    print(run_summary_table(result.records))
    for choice in read_choices(result.report_dir):
        print(f"{choice['sequence']}: exported the {choice['exported']} model (*): {choice['reason']}")
    log.info("weights: %s (process.py --weights %s); report: %s", result.weights_dir,
             result.weights_dir, result.report_dir)
    return 0


def _train_config(args: argparse.Namespace) -> SSLConfig:
    """The config file with the command line's overrides, or the defaults with them when only
    --data is given."""
    from sslmedsam2.ssl.config import build_config, load_config

    overrides = {key: value for key, value in (
        ("data.train", args.data and str(args.data.resolve())),
        ("data.sequences", args.sequences and list(args.sequences)),
        ("data.layout", args.layout),
        ("pseudo_labels.engine", args.engine), *schedule_overrides(args)) if value is not None}
    if args.config is not None:
        return load_config(args.config, overrides)
    if args.data is None:
        raise UsageError("train needs --config FILE (template: sslmedsam2 train --print-config) "
                         "or at least --data DIR")
    raw: dict = {}
    for dotted, value in overrides.items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    return build_config(raw, Path.cwd())


def run_reproduce(args: argparse.Namespace) -> int:
    from sslmedsam2.logs import run_log
    from sslmedsam2.ssl.config import load_config
    from sslmedsam2.ssl.reproduce import ReproduceSettings, reproduce

    overrides = {key: value for key, value in (
        ("data.train", str(args.train_root.resolve())),
        ("pseudo_labels.checkpoint", args.checkpoint and str(args.checkpoint.resolve())),
        ("pseudo_labels.engine", args.engine), ("intermediate.folds", args.folds),
        ("final.folds", args.folds), *schedule_overrides(args)) if value is not None}
    try:
        config = load_config(args.config, overrides)
    except UsageError as exc:
        if "needs pseudo_labels.checkpoint" not in str(exc):
            raise
        raise UsageError(f"{exc}: pass --checkpoint MedSAM2_latest.pt, or --engine atlas to "
                         "rehearse without one (not the paper's method)") from None
    # a dry run writes nothing, not even its log
    with contextlib.nullcontext() if args.dry_run else run_log(Path(args.work) / "reproduce.log"):
        reproduce(ReproduceSettings(config=config, val_root=args.val_root, work=args.work,
                                    val_gt=args.val_gt, stand_in=args.engine, dry_run=args.dry_run,
                                    progress=not args.quiet, executor=executor_config(args)))
    return 0


def run_pseudo_label(args: argparse.Namespace) -> int:
    from sslmedsam2.datasets.labelling import labelling_queries
    from sslmedsam2.executors import make_executor
    from sslmedsam2.pseudo_label import CaseLabeller, Shard, pseudo_label

    if args.method == "atlas":  # the other methods register nothing: their threads stay free
        pin_unless_threaded(args)
    try:
        shard = Shard.parse(args.shard)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    queries = labelling_queries(args.unlabelled, args.sequence[0])
    if not queries:
        raise UsageError(f"{args.unlabelled}: no {args.sequence[0]} volumes to label (expected "
                         f"<case>/{args.sequence[0]}.nii.gz, Vendor_X/<case>/..., or a collection "
                         "with unlabelled images)")
    recipe, source = _labelling_recipe(args)
    log.info("%s, %d quer%s (shard %d/%d: %d)", source, len(queries),
             "y" if len(queries) == 1 else "ies", shard.index, shard.count,
             len(shard.select(queries)))
    executor = make_executor(executor_config(args))
    labeller = CaseLabeller(recipe, args.out, args.sequence[0])
    records = pseudo_label(labeller, queries, shard, progress=not args.quiet, executor=executor)
    failed = [r for r in records if r["status"] == "error"]
    log.info("done: %d labelled, %d already done, %d failed", sum(r["status"] == "ok" for r in records),
             sum(r["status"] == "skipped" for r in records), len(failed))
    if args.montages:
        _pseudo_label_montages(args, records)
    return 1 if failed else 0


def _pseudo_label_montages(args: argparse.Namespace, records: list[dict]) -> None:
    from sslmedsam2.evaluation.case_montages import save_label_montages
    from sslmedsam2.pseudo_label import Query, outputs_of

    sequence = args.sequence[0]
    labels = [(f"{r['case']}_{sequence}", Path(r["input"]),
               outputs_of(args.out, Query(r["case"], Path(r["input"])), sequence)[0])
              for r in records if r["status"] != "error"]
    written = save_label_montages(labels, args.montages, "pseudo label", progress=not args.quiet)
    log.info("%d picture(s) of the pseudo labels in %s", len(written), args.montages)


def _labelling_recipe(args: argparse.Namespace):
    """How each worker builds the engine ``--method`` names (picklable), and a log line."""
    from functools import partial

    from sslmedsam2.datasets.labelling import labelling_supports
    from sslmedsam2.engines.atlas import AtlasEngine
    from sslmedsam2.engines.base import RuntimeOptions
    from sslmedsam2.engines.nnunet import NnUNetEngine
    from sslmedsam2.registration.label_propagation import AtlasConfig

    if args.method == "nnunet":
        if args.weights is None:
            raise UsageError("--method nnunet needs --weights DIR (an exported weights folder)")
        options = RuntimeOptions(device=args.device, folds=args.folds)
        engine = NnUNetEngine(args.weights, options)
        if not engine.can_segment(args.sequence[0]):
            raise UsageError(f"missing weights: expected {engine.missing(args.sequence[0])}")
        return (partial(NnUNetEngine, args.weights, options, with_uncertainty=True),
                f"nnU-Net ensemble from {args.weights}")
    if args.supports is None:
        raise UsageError(f"--method {args.method} needs --supports DIR (labelled cases)")
    supports, sequence = labelling_supports(args.supports, args.sequence[0])
    source = f"{len(supports)} {sequence} support(s)"
    if args.method == "sam2":
        return _sam2_recipe(args, supports), source
    atlas = AtlasConfig(deformable=args.deformable, weighted=not args.vote_only, intensity=not args.vote_only)
    return (partial(AtlasEngine, supports, atlas, max_supports=args.max_supports,
                    origin=str(args.supports), support_sequence=sequence), source)


def _sam2_recipe(args: argparse.Namespace, supports):
    from functools import partial

    from sslmedsam2.engines.base import RuntimeOptions
    from sslmedsam2.engines.sam2 import Sam2Engine
    from sslmedsam2.fewshot.checkpoints import verify_checkpoint
    from sslmedsam2.fewshot.tffs import TFFSConfig

    if args.checkpoint is None:
        raise UsageError("--method sam2 needs --checkpoint FILE (e.g. weights/sam2/MedSAM2_latest.pt)")
    config = {"paper": TFFSConfig(), "cpu-practical": TFFSConfig.cpu_practical(), "auto": None}[args.setting]
    # verified here, once, before any case: a bad file is one error line and exit 1
    return partial(Sam2Engine, supports, verify_checkpoint(args.checkpoint),
                   RuntimeOptions(device=args.device), config)


def run_check_weights(args: argparse.Namespace) -> int:
    from sslmedsam2.container.weights_check import check_weights

    report = check_weights(args.weights or default_weights_dir(), args.engines)
    print("\n".join(report.lines()))
    for problem in report.problems:
        log.error("%s", problem)
    return 1 if report.problems else 0


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    """Where cases and folds run: here (default) or on a Ray cluster."""
    group = parser.add_argument_group(
        "scale-out", "Cases (and nnU-Net folds) as tasks: local runs them in this process, ray "
                     "on a Ray cluster whose nodes share the run folder's storage. Finished "
                     "cases are never redone, so a run may change executor when resumed.")
    group.add_argument("--executor", choices=["local", "ray"], default="local",
                       help="local (default) or ray")
    group.add_argument("--workers", type=int, default=None,
                       help="parallel case workers, each with its own engine (local default 1: "
                            "this process; ray default: as many as the cluster fits)")
    group.add_argument("--ray-address", default=None, metavar="auto|HOST:PORT",
                       help="the Ray cluster to join (default: start Ray on this machine)")
    group.add_argument("--cpus-per-task", type=float, default=1.0,
                       help="CPUs per case worker (its thread count; default 1)")
    group.add_argument("--gpus-per-task", type=float, default=0.0,
                       help="GPUs per case worker and per fold, e.g. 1 or 0.5 (default 0)")
    group.add_argument("--memory-per-task", type=float, default=None, metavar="GB",
                       help="RAM Ray reserves per task (default: none)")


def executor_config(args: argparse.Namespace):
    from sslmedsam2.executors import ExecutorConfig, Resources

    if args.workers is not None and args.workers < 1:
        raise UsageError("--workers must be at least 1")
    task = Resources(cpus=args.cpus_per_task, gpus=args.gpus_per_task,
                     memory_gb=args.memory_per_task)
    fold = Resources(cpus=max(args.cpus_per_task, 1.0), gpus=args.gpus_per_task,
                     memory_gb=args.memory_per_task)
    return ExecutorConfig(kind=args.executor, workers=args.workers, ray_address=args.ray_address,
                          task=task, fold_task=fold)


def run_convert_chaos(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sslmedsam2.datasets.chaos import convert_patient, find_patients
    from sslmedsam2.datasets.fewshot_grid import FewShotGrid

    grid = FewShotGrid() if args.grid == "few-shot" else None
    patients = find_patients(args.chaos, args.sequence)
    if not patients:
        raise UsageError(f"{args.chaos}: no CHAOS MR patient with {args.sequence} "
                         "(expected <id>/T2SPIR/DICOM_anon or <id>/T1DUAL/DICOM_anon/InPhase)")
    failed = 0
    for patient in tqdm(patients, desc="patients", unit="patient", disable=args.quiet):
        if patient.outputs(args.out)[0].is_file():
            continue  # done by an earlier run: the image is written last
        try:
            convert_patient(patient, args.out, grid)
        except SSLMedSAM2Error as exc:
            log.error("%s: %s", patient.case, exc)
            failed += 1
    log.info("%d of %d patients in %s (%s on the %s grid: <case>_image.nii.gz + <case>_liver.nii.gz)",
             len(patients) - failed, len(patients), args.out, args.sequence, args.grid)
    return 1 if failed else 0


def run_montage(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from sslmedsam2.evaluation.montage import save_overlay_montage
    from sslmedsam2.io import read_volume

    masks = {}
    for item in args.mask:
        name, _, path = item.partition("=")
        masks[name if path else Path(name).name] = sitk.ReadImage(path or name)
    path = save_overlay_montage(read_volume(args.image), masks, args.out, n_slices=args.slices,
                                title=args.title or args.image.name)
    log.info("montage written to %s", path)
    return 0


def add_schedule_overrides(parser: argparse.ArgumentParser) -> None:
    """Options that commands running the loop share: schedule and device overrides, output."""
    parser.add_argument("--profile", choices=["cpu-quick", "tiny-test", "paper"], default=None,
                        help="override the training profile of every round (cpu-quick and "
                             "tiny-test are CPU rehearsals, not the paper's schedule)")
    parser.add_argument("--max-rounds", type=int, default=None, help="override [loop] max_rounds")
    parser.add_argument("--device", default=None, help="override [loop] device (auto, cpu, cuda)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, and nnU-Net's full per-epoch output on the terminal "
                             "(by default it goes to fold_<fold>.log beside each model, and the "
                             "terminal shows one progress bar per fold)")


def schedule_overrides(args: argparse.Namespace) -> list[tuple[str, object]]:
    """``section.key`` values from ``add_schedule_overrides``' options."""
    return [("intermediate.profile", args.profile), ("final.profile", args.profile),
            ("loop.max_rounds", args.max_rounds), ("loop.device", args.device)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslmedsam2",
        description="SSL-MedSAM2 liver segmentation in MRI: inference container, training, "
                    "evaluation with the CARE challenge metrics, example data.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    _add_infer_command(commands)
    _add_evaluate_command(commands)
    _add_make_example_command(commands)
    _add_train_command(commands)
    _add_reproduce_command(commands)
    _add_pseudo_label_command(commands)
    _add_check_weights_command(commands)
    _add_montage_command(commands)
    _add_convert_chaos_command(commands)
    return parser


def _add_infer_command(commands: Commands) -> None:
    infer = commands.add_parser("infer", help="segment volumes (what the container's process.py runs)",
                                description=INFER_DESCRIPTION)
    add_infer_arguments(infer)


def _add_evaluate_command(commands: Commands) -> None:
    evaluate = commands.add_parser(
        "evaluate", help="Dice, Hausdorff (max) and HD95 in mm per case and sequence",
        description="Pair predictions (<case>/<SEQ>_pred.nii.gz or <name>_pred.*) with ground truth "
                    "(<case>/mask_<SEQ>.nii.gz or <name>.*, or a labelled collection's masks: "
                    "imagesTr/ + labelsTr/, images/ + masks/, <case>_image + <case>_liver, where "
                    "<case>_pred, or the prediction of a case's image, <case>_image_pred or "
                    "<case>_0000_pred, is that case's) and score them with the challenge's "
                    "metric definitions. Empty masks: both empty -> Dice 1, HD 0; one empty -> "
                    "Dice 0, HD = image diagonal (mm).")
    evaluate.add_argument("--pred", type=Path, required=True, help="prediction folder")
    evaluate.add_argument("--gt", type=Path, required=True, help="ground-truth folder")
    evaluate.add_argument("--out", type=Path, default=None, help="write per-case results as CSV")
    evaluate.add_argument("--sequences", type=_sequence_list, default=None,
                          help="score only these sequences, e.g. GED4 (default: all found)")
    evaluate.add_argument("--min-dice", type=float, default=None,
                          help="exit 1 when any case scores below this Dice")
    evaluate.add_argument("--montages", type=Path, default=None, metavar="DIR",
                          help="one PNG per case here, prediction (red) and ground truth (green) "
                               "on the image, numbered worst Dice first")
    evaluate.add_argument("--images", type=Path, default=None, metavar="DIR",
                          help="for --montages, where the images are when they do not lie beside "
                               "the ground truth: a CARE input root (<case>/<SEQ>.nii.gz) or a "
                               "folder of <name>.nii.gz (or <name>_0000, <name>_image)")
    evaluate.add_argument("--worst", type=int, default=None, metavar="N",
                          help="for --montages, only the N cases of lowest Dice (default: every case)")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    evaluate.add_argument("-v", "--verbose", action="store_true")
    evaluate.set_defaults(func=run_evaluate)


def _add_make_example_command(commands: Commands) -> None:
    example = commands.add_parser(
        "make-example", help="synthetic CARE-like dataset grown from the bundled real MRI",
        description="Write a multi-vendor CARE-layout dataset (GED4 + T1, a few labelled training "
                    "cases, test input with info.csv, ground truth for every case).")
    example.add_argument("--out", type=Path, required=True, help="output folder")
    example.add_argument("--cases", type=int, default=9, help="training cases (default 9)")
    example.add_argument("--test-cases", type=int, default=3, help="test cases (default 3)")
    example.add_argument("--labelled-per-vendor", type=int, default=2,
                         help="training cases per vendor with a GED4 mask (default 2)")
    example.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    example.add_argument("--variability", type=float, default=1.0,
                         help="how much patients differ (deformation and pose ranges x this; "
                              "default 1, at most 4)")
    example.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    example.add_argument("-v", "--verbose", action="store_true")
    example.set_defaults(func=run_make_example)


def _add_train_command(commands: Commands) -> None:
    train = commands.add_parser(
        "train", help="the semi-supervised loop: few-shot pseudo labels, then nnU-Net rounds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="SSL-MedSAM2's FSL-nnUNet branch on a labelled collection (a CARE training "
                    "root, nnU-Net's imagesTr/ + labelsTr/, images/ + masks/ matched by name, or "
                    "one folder of <case>_image + <case>_liver files; cases with a mask are the "
                    "labelled ones, checked before anything trains): round 0 pseudo "
                    "labels for the unlabelled cases (atlas or SAM2 few-shot, by default averaged "
                    "with an nnU-Net trained on the labelled cases alone), then nnU-Net trained "
                    "on labelled + pseudo labels, whose predictions become the next round's pseudo "
                    "labels until they stop changing; the final model is exported to --weights "
                    "with a manifest, ready for process.py.\n\n"
                    "Every choice is in the config file (sslmedsam2 train --print-config > ssl.toml). "
                    "Resumable: run the same command again after an interruption and it continues "
                    "from the last finished step.",
        epilog="examples:\n  sslmedsam2 train --config ssl.toml --run runs/ssl\n"
               "  sslmedsam2 train --data my_livers/ --sequences T2 --run runs/t2   "
               "(a plain collection)")
    train.add_argument("--config", type=Path, default=None,
                       help="TOML config (default: the template's defaults; --data is then needed)")
    train.add_argument("--run", type=Path, default=Path("runs/ssl"),
                       help="run folder: state, rounds, report (default runs/ssl)")
    train.add_argument("--weights", type=Path, default=None,
                       help="where to export the final weights (default <run>/weights)")
    train.add_argument("--data", type=Path, default=None,
                       help="override [data] train: a CARE root or any labelled collection")
    train.add_argument("--layout", choices=["auto", "care", "nnunet", "folders", "flat"],
                       default=None, help="override [data] layout (default auto: told by names)")
    train.add_argument("--sequences", type=_sequence_list, default=None,
                       help="override [data] sequences: CARE names, e.g. GED4,T1, or the one name "
                            "of a plain collection's sequence, e.g. T2 (names the models)")
    train.add_argument("--engine", choices=["atlas", "sam2", "none"], default=None,
                       help="override [pseudo_labels] engine (none: labelled-only nnU-Net)")
    add_schedule_overrides(train)
    add_executor_arguments(train)
    train.add_argument("--print-config", action="store_true",
                       help="print the annotated config template and exit")
    train.add_argument("--dry-run", action="store_true",
                       help="check the collections (every problem named by file) and print what "
                            "would be trained on them, then stop; writes nothing")
    train.set_defaults(func=run_train)


def _add_reproduce_command(commands: Commands) -> None:
    repro = commands.add_parser(
        "reproduce", help="the paper's experiment on CARE-LiSeg: check, train, submit, score",
        description="Reproduce SSL-MedSAM2 on CARE-LiSeg data: check both roots (refuses on any "
                    "problem, naming each), state the expected cost, run the semi-supervised "
                    "loop (resumable), predict the validation cases with process.py's code path "
                    "into <work>/submission/LiSeg_pred/<case>/<SEQ>_pred.nii.gz and, with "
                    "--val-gt, print Dice and HD per sequence and vendor beside the paper's "
                    "figures. Run the same command again to resume.",
        epilog="example: sslmedsam2 reproduce --config configs/care2025_paper.toml --train-root "
               "CARE/LiSeg/train --val-root CARE/LiSeg/val --checkpoint MedSAM2_latest.pt "
               "--work runs/care")
    repro.add_argument("--config", type=Path, required=True,
                       help="the protocol (configs/care2025_paper.toml: the paper's setting)")
    repro.add_argument("--train-root", type=Path, required=True,
                       help="CARE training root: Vendor_X/<case>/GED4.nii.gz (+ mask_GED4.nii.gz)")
    repro.add_argument("--val-root", type=Path, required=True,
                       help="CARE validation root: Vendor_X/<case>/<SEQ>.nii.gz and info.csv")
    repro.add_argument("--val-gt", type=Path, default=None,
                       help="validation masks (<case>/mask_<SEQ>.nii.gz) to score against")
    repro.add_argument("--work", type=Path, required=True,
                       help="run folder, exported weights, submission and reports")
    repro.add_argument("--checkpoint", type=Path, default=None,
                       help="the SAM2 / MedSAM2 checkpoint (overrides pseudo_labels.checkpoint)")
    repro.add_argument("--engine", choices=["atlas"], default=None,
                       help="make round 0 with this engine instead of SAM2 (no checkpoint at "
                            "hand; logged: not the paper's method)")
    repro.add_argument("--folds", type=_fold_list, default=None,
                       help="override the folds of every round, e.g. all (one model on every case)")
    add_schedule_overrides(repro)
    add_executor_arguments(repro)
    repro.add_argument("--dry-run", action="store_true",
                       help="check the data and print the expected cost, then stop")
    repro.set_defaults(func=run_reproduce)


def _add_pseudo_label_command(commands: Commands) -> None:
    pseudo = commands.add_parser(
        "pseudo-label", help="few-shot pseudo labels for unlabelled volumes (resumable, shardable)",
        description="Label every <SEQ> volume under --unlabelled from the labelled supports: CARE's "
                    "GED4 cases, or any collection's labelled cases (nnU-Net raw, images/ + masks/, "
                    "flat <case>_image + <case>_liver); from a collection, --unlabelled takes its "
                    "cases without a mask, so one folder may be given to both. "
                    "Writes <out>/<case>/<SEQ>.nii.gz (mask on the query grid) and "
                    "<SEQ>_uncertainty.nii.gz, skips cases already done, and logs a JSON line per "
                    "case. Method atlas: each support registered to the query (ANTs SyN within the "
                    "supports' sequence, SimpleITK affine by mutual information across "
                    "sequences), the warped masks' vote (weighted by local likeness to the query "
                    "within a sequence) corrected by the query's own intensities. Method sam2: "
                    "the supports as SAM2 memory, whole-insert videos (TFFS-MedSAM2).")
    pseudo.add_argument("--method", choices=["atlas", "sam2", "nnunet"], default="atlas",
                        help="atlas: registration + vote (no weights); sam2: TFFS-MedSAM2 "
                             "(needs --checkpoint); nnunet: batch prediction with a trained "
                             "ensemble (needs --weights)")
    pseudo.add_argument("--checkpoint", type=Path, default=None,
                        help="sam2: a local checkpoint (MedSAM2_latest.pt, sam2.1_hiera_*.pt, or "
                             "any SAM 2 / 2.1 file, recognised by its content and verified before "
                             "any case); nothing is downloaded")
    pseudo.add_argument("--setting", choices=["auto", "paper", "cpu-practical"], default="auto",
                        help="sam2: paper = 10 supports x 5 insertions, all slices (GPU); "
                             "cpu-practical = an approximation (3 x 2, every 2nd support slice, "
                             "4 prompted frames in attention); auto = paper on GPU")
    pseudo.add_argument("--device", default="auto", help="sam2, nnunet: auto, cpu or cuda[:N]")
    pseudo.add_argument("--weights", type=Path, default=None,
                        help="nnunet: an exported weights folder (sslmedsam2 train's weights/)")
    pseudo.add_argument("--folds", type=_fold_list, default=None,
                        help="nnunet: folds to ensemble (default: all on GPU, one on CPU)")
    pseudo.add_argument("--supports", type=Path, default=None,
                        help="atlas, sam2: <case>/GED4.nii.gz + mask_GED4.nii.gz folders, a CARE "
                             "training root, or any labelled collection (its cases with a mask)")
    pseudo.add_argument("--unlabelled", type=Path, required=True,
                        help="CARE root (Vendor_X/<case>/<SEQ>.nii.gz), a folder of case folders, "
                             "or a collection (its cases without a mask)")
    pseudo.add_argument("--out", type=Path, required=True)
    pseudo.add_argument("--sequence", type=_sequence_list, default=("GED4",),
                        help="query sequence (default: GED4); CARE supports are always GED4, a "
                             "collection's supports take this name, so queries of the same name "
                             "are registered deformably (SyN), others affinely")
    pseudo.add_argument("--shard", default="0/1", help="i/n: this machine's share of the cases")
    pseudo.add_argument("--montages", type=Path, default=None, metavar="DIR",
                        help="one PNG per labelled case of this shard here, the pseudo label drawn "
                             "on its image (<case>_<SEQ>.png)")
    add_registration_threads(pseudo)
    pseudo.add_argument("--max-supports", type=int, default=5,
                        help="supports registered per query, same vendor first (default 5)")
    pseudo.add_argument("--deformable", action="store_true",
                        help="atlas across sequences: add a B-spline stage after the affine "
                             "one (slower)")
    pseudo.add_argument("--vote-only", action="store_true",
                        help="atlas: the supports' plain majority vote as it lands (the default "
                             "weights each support by its local likeness to the query and "
                             "corrects the vote by the query's own intensities)")
    add_executor_arguments(pseudo)
    pseudo.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pseudo.add_argument("-v", "--verbose", action="store_true")
    pseudo.set_defaults(func=run_pseudo_label)


def _add_check_weights_command(commands: Commands) -> None:
    check = commands.add_parser(
        "check-weights", help="what every model file of a weights folder is, and what it serves",
        description="Check a weights folder without loading a model: the manifest's checksums, "
                    "each SAM2 checkpoint by its content (official by sha256, else by its "
                    "tensors), each nnU-Net model folder (plans, dataset.json, fold checkpoints), "
                    "the supports' headers; then, per sequence, which engine would serve it. "
                    "Exit code 1 when anything is broken or the sequence process.py must segment "
                    "(GED4, or the weights' only sequence) would not be served.")
    check.add_argument("weights", type=Path, nargs="?", default=None,
                       help="the weights folder (default: as process.py finds it)")
    check.add_argument("--engines", type=lambda t: tuple(t.split(",")), default=None,
                       help="engines in process.py's order (default: as process.py chooses them, "
                            "from the manifest, else nnunet,sam2,atlas)")
    check.add_argument("-v", "--verbose", action="store_true")
    check.set_defaults(func=run_check_weights)


def _add_montage_command(commands: Commands) -> None:
    montage = commands.add_parser("montage", help="PNG of axial slices with mask contours")
    montage.add_argument("--image", type=Path, required=True)
    montage.add_argument("--mask", action="append", default=[], metavar="NAME=PATH",
                         help="a mask to draw (repeatable), e.g. prediction=pred.nii.gz")
    montage.add_argument("--out", type=Path, required=True, help="PNG path")
    montage.add_argument("--slices", type=int, default=6)
    montage.add_argument("--title", default=None)
    montage.add_argument("-v", "--verbose", action="store_true")
    montage.set_defaults(func=run_montage)


def _add_convert_chaos_command(commands: Commands) -> None:
    convert = commands.add_parser(
        "convert-chaos", help="the CHAOS MR download (DICOM + PNG labels) as NIfTI images and liver masks",
        description="Read the CHAOS challenge's MR patients (Zenodo doi 10.5281/zenodo.3431873, CC "
                    "BY-NC-SA 4.0: keep the output out of anything you redistribute) and write "
                    "<out>/chaos_<sequence>_<id>_image.nii.gz + _liver.nii.gz on each DICOM series' "
                    "own grid, the flat layout that train, the benchmarks and evaluate read. Each "
                    "label PNG is placed on the slice of the DICOM file it belongs to. Resumable: "
                    "patients already written are skipped; a patient that fails is named and the "
                    "others are still converted (exit code 1).",
        epilog="example: sslmedsam2 convert-chaos --chaos CHAOS_Train_Sets/Train_Sets/MR "
               "--out chaos-t2 --grid few-shot && python benchmarks/bench_fewshot_real.py --data chaos-t2")
    convert.add_argument("--chaos", type=Path, required=True,
                         help="the unpacked download, its Train_Sets/MR folder, or one patient folder")
    convert.add_argument("--out", type=Path, required=True, help="output folder")
    convert.add_argument("--sequence", choices=CHAOS_SEQUENCES, default="T2SPIR",
                         help="which series (default T2SPIR; T1DUAL-in / -out: the in- or "
                              "opposed-phase T1, both with T1DUAL's labels)")
    convert.add_argument("--grid", choices=["native", "few-shot"], default="native",
                         help="native (default): each series' own voxels; few-shot: SSL-ALPNet's "
                              "preprocessing, which the few-shot literature's figures and this "
                              "project's CHAOS benchmarks are measured on (top 0.5%% of grey levels "
                              "clipped, 1.25 x 1.25 x 7.7 mm, 256 x 256 in plane about the centre); "
                              "give each grid its own --out")
    convert.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    convert.add_argument("-v", "--verbose", action="store_true")
    convert.set_defaults(func=run_convert_chaos)


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run a parsed command; user-facing errors become one log line and exit code 1. Every
    command (inference, training, pseudo labels, montages) runs in a container whose HOME may be
    read-only, so library caches are redirected first when it is."""
    from sslmedsam2.runtime import private_caches

    setup_logging(getattr(args, "verbose", False))
    try:
        private_caches()
        return args.func(args)
    except SSLMedSAM2Error as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
