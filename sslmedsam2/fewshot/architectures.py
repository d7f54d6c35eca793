"""Which sam2 model a state dict belongs to, from its tensor names and shapes (its layout).

A file's name says nothing reliable (a user's ``medsam2.pt``, a fine-tune, a renamed download),
but its tensors do: each sam2 config builds a model with one exact layout. Layouts are derived
from sam2 itself each time (nothing cached, nothing shipped that could drift from the installed
sam2), on the meta device, where a model has shapes but no memory and no initialisation: about
0.2 s a config instead of seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sslmedsam2.fewshot.known_checkpoints import SPECS, CheckpointSpec

log = logging.getLogger(__name__)

Layout = dict[str, tuple[int, ...]]

#: How many tensor names an explanation lists before "...".
_SHOWN = 3


def layout_of(state: Mapping[str, Any]) -> Layout:
    """Name -> shape of every tensor in a state dict (other entries ignored)."""
    return {name: tuple(value.shape) for name, value in state.items() if hasattr(value, "shape")}


def model_layout(spec: CheckpointSpec) -> Layout:
    """The layout of the model sam2 builds for ``spec``, as a checkpoint's ``model`` entry."""
    from sam2.build_sam import build_sam2  # heavy; only when a layout is needed

    try:
        model = _build_on_meta(spec)
    except Exception as error:  # a torch or sam2 version where that trick fails: the slow way
        log.debug("meta build of %s failed (%s); building on the CPU", spec.config, error)
        model = build_sam2(spec.config, ckpt_path=None, device="cpu",
                           hydra_overrides_extra=spec.hydra_overrides)
    return layout_of(model.state_dict())


def _build_on_meta(spec: CheckpointSpec) -> Any:
    """sam2's own build inside ``torch.device('meta')`` (the context torch implements with
    ``DeviceContext``), except ``torch.linspace``: Hiera reads its drop-path rates with
    ``.item()``, which a meta tensor cannot answer."""
    import torch
    from sam2.build_sam import build_sam2
    from torch.utils._device import DeviceContext

    class MetaExceptLinspace(DeviceContext):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.linspace:
                return func(*args, **(kwargs or {}))
            return super().__torch_function__(func, types, args, kwargs)

    with MetaExceptLinspace(torch.device("meta")):
        return build_sam2(spec.config, ckpt_path=None, device="meta",
                          hydra_overrides_extra=spec.hydra_overrides)


@dataclass(frozen=True)
class LayoutDiff:
    """How a file's layout differs from one spec's model."""

    spec: CheckpointSpec
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    reshaped: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.reshaped)

    @property
    def distance(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.reshaped)

    def describe(self) -> str:
        """E.g. ``3 missing (a, b, c, ...), 1 reshaped (x [96] here, [112] in the model)``."""
        parts = [f"{len(names)} {label} ({_names(names)})"
                 for label, names in (("missing", self.missing), ("unexpected", self.unexpected))
                 if names]
        if self.reshaped:
            shown = ", ".join(f"{name} {list(have)} here, {list(want)} in the model"
                              for name, have, want in self.reshaped[:_SHOWN])
            more = ", ..." if len(self.reshaped) > _SHOWN else ""
            parts.append(f"{len(self.reshaped)} reshaped ({shown}{more})")
        return ", ".join(parts) or "identical"


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(names[:_SHOWN]) + (", ..." if len(names) > _SHOWN else "")


def compare(layout: Layout, spec: CheckpointSpec, model: Layout) -> LayoutDiff:
    """The differences between a file's ``layout`` and a spec's ``model`` layout."""
    return LayoutDiff(
        spec=spec,
        missing=tuple(name for name in model if name not in layout),
        unexpected=tuple(name for name in layout if name not in model),
        reshaped=tuple((name, layout[name], shape) for name, shape in model.items()
                       if name in layout and layout[name] != shape))


def rank(layout: Layout, specs: Iterable[CheckpointSpec] = SPECS) -> list[LayoutDiff]:
    """Every spec's differences from ``layout``, closest first; among equals the 1024 px
    models (sam2's own) come first, then ``specs``' order."""
    diffs = [compare(layout, spec, model_layout(spec)) for spec in specs]
    return sorted(diffs, key=lambda diff: (diff.distance, diff.spec.image_size != 1024))


def foreign_hint(layout: Layout) -> str:
    """A guess at what a layout no sam2 config builds is, when it looks like something known."""
    names = list(layout)
    if any(n.startswith(("image_encoder.blocks.", "image_encoder.patch_embed.")) for n in names):
        return ("SAM v1 checkpoint? its keys look like segment-anything's "
                "(image_encoder.blocks...), as in SAM or MedSAM v1; SAM 2 is a different model")
    if names and all(n.startswith("module.") for n in names):
        return ("its keys start with 'module.' (saved from a DataParallel wrapper? save "
                "model.module.state_dict())")
    return ""
