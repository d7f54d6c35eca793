"""``sslmedsam2 check-weights DIR``: what every model file of a weights folder is, and which
engine would serve each sequence, without loading a model.

A weights folder is assembled by hand as often as it is exported (copied checkpoints, a
``model.tar.gz`` unpacked on a platform), and ``process.py`` only finds out at the first case
what is missing or broken. This check answers beforehand, from the files: the manifest's
checksums, each SAM2 checkpoint by its content (``fewshot.identity``), each nnU-Net model
folder's plans, dataset.json and fold checkpoints as containers, each support's headers.
Conventions are the engines' own (``engines.nnunet.discover_models``, ``fewshot.checkpoints
.checkpoint_files``, ``supports.weights_supports``), so the check cannot disagree with them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from sslmedsam2.engines import manifest_engines
from sslmedsam2.engines.average import UNTAUGHT_BELOW, untaught_agreement
from sslmedsam2.engines.nnunet import CHECKPOINT, ModelFolder, discover_models
from sslmedsam2.errors import SSLMedSAM2Error
from sslmedsam2.fewshot.checkpoint_file import check_archive
from sslmedsam2.fewshot.checkpoints import checkpoint_files
from sslmedsam2.fewshot.identity import CheckpointIdentity, identify_checkpoint
from sslmedsam2.manifest import MANIFEST, sole_sequence, verify_manifest
from sslmedsam2.sequences import CARE_SEQUENCES, GED4
from sslmedsam2.supports import Support, support_sequence, weights_supports


@dataclass(frozen=True)
class Finding:
    """One file or folder of the weights and what it is; ``ok`` False when it is broken."""

    path: str
    what: str
    ok: bool = True


@dataclass(frozen=True)
class Service:
    """The engines that would segment ``sequence``, in the order they are tried."""

    sequence: str
    engines: tuple[str, ...]
    ok: bool = True


@dataclass
class WeightsReport:
    """Everything ``check-weights`` found; ``problems`` decides its exit code."""

    root: Path
    findings: list[Finding] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        broken = [f"{f.path}: {f.what}" for f in self.findings if not f.ok]
        return broken + [f"{s.sequence}: {', '.join(s.engines)}" for s in self.services if not s.ok]

    def lines(self) -> list[str]:
        """The printed report: files, then sequences, then the verdict."""
        lines = [f"weights folder {self.root}"]
        lines += [f"  {f.path}: {'' if f.ok else 'BROKEN: '}{f.what}" for f in self.findings]
        lines.append("sequences (engines in the order process.py tries them):")
        width = max(len(s.sequence) for s in self.services)
        lines += [f"  {s.sequence:<{width}}  {'; then '.join(s.engines)}" for s in self.services]
        problems = self.problems
        lines.append(f"{len(problems)} problem(s)" if problems else "ok")
        return lines


def check_weights(root: Path, engines: tuple[str, ...] | None = None) -> WeightsReport:
    """Check the folder ``process.py --weights root`` would use with ``--engines engines``
    (None: the chain its manifest names, else the default one, as process.py does)."""
    root = Path(root)
    report = WeightsReport(root)
    if not root.is_dir():
        report.findings.append(Finding(str(root), "no such folder", ok=False))
        report.services.append(Service(GED4, ("not served",), ok=False))
        return report
    finding, manifest = _manifest(root)
    report.findings.append(finding)
    engines = engines or manifest_engines(manifest)
    sam2, sam2_findings = _sam2(root)
    models, model_findings = _nnunet(root)
    supports, support_findings = _supports(root)
    report.findings += sam2_findings + model_findings + support_findings
    needed = sole_sequence(manifest)  # what process.py must segment: CARE's GED4, or a plain run's
    for sequence in dict.fromkeys(_sequences(root) + [support_sequence(supports), needed]):
        served = _serving(root, sequence, engines, models.get(sequence, []), sam2, supports)
        ok = all("BROKEN" not in e for e in served) and (bool(served) or sequence != needed)
        report.services.append(Service(sequence, tuple(served) or ("not served",), ok))
    return report


def _manifest(root: Path) -> tuple[Finding, dict]:
    """The manifest's finding, and the manifest when it holds (else an empty one)."""
    try:
        manifest = verify_manifest(root)
    except SSLMedSAM2Error as error:
        return Finding(MANIFEST, _without_path(error, root / MANIFEST), ok=False), {}
    if manifest is None:
        return Finding(MANIFEST, "absent: a hand-assembled folder, files not checked against "
                                 "checksums"), {}
    return Finding(MANIFEST, f"{len(manifest['files'])} file(s) match their sha256"), manifest


Sam2Outcome = CheckpointIdentity | SSLMedSAM2Error | None


def _sam2(root: Path) -> tuple[Sam2Outcome, list[Finding]]:
    """Every checkpoint candidate identified; the first is the one the sam2 engine takes."""
    findings: list[Finding] = []
    chosen: Sam2Outcome = None
    for index, path in enumerate(checkpoint_files(root)):
        label = _relative(path, root) + (" (used by sam2)" if index == 0 else
                                         " (not used: another file comes first)")
        try:
            outcome: Sam2Outcome = identify_checkpoint(path)
        except SSLMedSAM2Error as error:
            outcome = error
            findings.append(Finding(label, _without_path(error, path), ok=False))
        else:
            findings.append(Finding(label, outcome.describe()))
        chosen = outcome if index == 0 else chosen
    return chosen, findings


def _nnunet(root: Path) -> tuple[dict[str, list[tuple[ModelFolder, bool]]], list[Finding]]:
    """Each sequence's model folders (and whether each is intact), checked without loading."""
    models: dict[str, list[tuple[ModelFolder, bool]]] = {}
    findings = []
    for sequence in _sequences(root):
        folder = root / "nnunet" / sequence
        found = discover_models(root, sequence)
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.is_dir() and path not in {m.path for m in found}:
                findings.append(Finding(_relative(path, root), "not a model folder with a "
                                        f"finished fold (fold_<k>/{CHECKPOINT}): ignored"))
        for model in found:
            finding = _model_finding(model, root)
            findings.append(finding)
            models.setdefault(sequence, []).append((model, finding.ok))
    return models, findings


def _model_finding(model: ModelFolder, root: Path) -> Finding:
    """plans.json and dataset.json readable and naming the configuration; every fold's
    checkpoint a complete PyTorch archive; unfinished folds named."""
    problems = _json_problems(model)
    sizes = []
    for fold in model.folds:
        checkpoint = model.path / f"fold_{fold}" / CHECKPOINT
        try:
            sizes.append(check_archive(checkpoint).size)
        except SSLMedSAM2Error as error:
            problems.append(f"fold_{fold}/{CHECKPOINT}: {_without_path(error, checkpoint)}")
    unfinished = sorted(p.name for p in model.path.glob("fold_*")
                        if p.is_dir() and not (p / CHECKPOINT).is_file())
    what = (f"nnU-Net {model.configuration}, fold(s) {', '.join(model.folds)} "
            f"({sum(sizes) / 1e6:.1f} MB of {CHECKPOINT})")
    if unfinished:
        what += f"; {', '.join(unfinished)} unfinished (no {CHECKPOINT}): ignored"
    if problems:
        return Finding(_relative(model.path, root), f"{what}; {'; '.join(problems)}", ok=False)
    return Finding(_relative(model.path, root), what + "; plans.json, dataset.json ok")


def _json_problems(model: ModelFolder) -> list[str]:
    problems = []
    for name in ("dataset.json", "plans.json"):
        try:
            content = json.loads((model.path / name).read_text())
        except FileNotFoundError:
            problems.append(f"no {name}")
            continue
        except (OSError, ValueError) as error:
            problems.append(f"{name} unreadable ({type(error).__name__})")
            continue
        if name == "plans.json" and model.configuration not in content.get("configurations", {}):
            problems.append(f"plans.json has no '{model.configuration}' configuration")
    return problems


def _supports(root: Path) -> tuple[list[Support], list[Finding]]:
    """The few-shot supports (what sam2 and atlas segment from), headers read, not voxels."""
    supports = weights_supports(root)
    findings = []
    for support in supports:
        problem = _support_problem(support)
        if problem:
            findings.append(Finding(_relative(support.image.parent, root), problem, ok=False))
    if supports:
        vendors = sorted({s.vendor or "?" for s in supports})
        findings.append(Finding("supports", f"{len(supports)} labelled "
                                            f"{support_sequence(supports)} case(s), vendor(s) "
                                            f"{', '.join(vendors)}"))
    return supports, findings


def _support_problem(support: Support) -> str:
    sizes = []
    for path in (support.image, support.mask):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return f"{path.name} unreadable"
        sizes.append(reader.GetSize())
    return "" if sizes[0] == sizes[1] else f"mask size {sizes[1]} differs from image {sizes[0]}"


def _sequences(root: Path) -> list[str]:
    """CARE's sequences, then any other sequence folder under ``nnunet/``."""
    extra = sorted(p.name for p in (root / "nnunet").glob("*")
                   if p.is_dir() and p.name not in CARE_SEQUENCES)
    return list(CARE_SEQUENCES) + extra


def _serving(root: Path, sequence: str, engines: tuple[str, ...],
             models: list[tuple[ModelFolder, bool]], sam2: Sam2Outcome, supports: list[Support]) -> list[str]:
    """What each engine that can take ``sequence`` would use, as ``process.py`` tries them."""
    served = []
    for engine in engines:
        if engine == "nnunet" and models:
            text = ", ".join(f"{m.configuration} (folds {','.join(m.folds)})" for m, _ in models)
            broken = "" if all(ok for _, ok in models) else " BROKEN"
            served.append(f"nnunet {text}{broken}")
        elif engine == "sam2" and supports and sam2 is not None:
            if isinstance(sam2, CheckpointIdentity):
                served.append(f"sam2 {sam2.path.name} ({sam2.spec.name}), {len(supports)} "
                              "support(s)")
            else:
                served.append("sam2 BROKEN checkpoint")
        elif engine == "atlas" and supports:
            served.append(f"atlas, {len(supports)} support(s)")
        elif engine == "average" and models and supports and support_sequence(supports) == sequence:
            served.append(f"{_average_order(root, sequence)}, {len(supports)} support(s)")
    return served


def _average_order(root: Path, sequence: str) -> str:
    """The averaged pair in the order ``AverageEngine.from_weights`` builds it, and why."""
    agreement = untaught_agreement(root, sequence)
    if agreement is None:
        return "average of nnunet and atlas"
    return (f"average of atlas and nnunet (the atlas first where they part: the model agrees "
            f"{agreement:.3f} with its teacher's labels, under {UNTAUGHT_BELOW})")


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _without_path(error: BaseException, path: Path) -> str:
    """An error's message without its leading ``<path>: ``, which the report already shows."""
    return str(error).removeprefix(f"{path}: ")
