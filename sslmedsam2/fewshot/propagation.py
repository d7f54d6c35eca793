"""SAM2 video propagation on in-memory frames, with exact image-encoder and prompt caches.

sam2's ``init_state`` only reads JPEG folders or mp4 files. Its state is a plain dict, so we build
the same dict ourselves (``new_inference_state``) around frames we already hold as tensors.

The image encoder is the dominant cost of the method, and the authors' code re-encodes every frame
of every video (2 directions x supports x insertions). A frame's encoding depends only on its
pixels, so we encode each unique slice once (``EncodedFrames``) and hand the features to the
predictor through the state's own ``cached_features`` field, which ``_get_image_feature`` consults
before encoding. We pre-fill it for *every* frame of a video: the predictor only overwrites that
dict on a miss, and with every frame present there is none, so no frame is encoded again.

Each mask-prompted support slice also costs SAM heads (for its object pointer) and a memory-encoder
pass in every video. In a fresh state such a frame is an initial conditioning frame: with
``use_mask_input_as_output_without_sam`` (SAM2.1 configs) its output is its mask as logits plus a
pointer from the SAM heads on its own features, and even without that option an initial
conditioning frame attends to no memory. The memory encoder then sees only its features, that
mask and its object score (one object, so no non-overlap step). Nothing depends on the frame's
index or its neighbours; temporal encodings are added later, in memory attention, from the
indices of the video being tracked. So ``prompt_outputs`` computes these outputs once on a state
holding the support alone, and ``add_prompt_outputs`` hands them to each fresh state where
``add_new_mask`` would have left its own.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sslmedsam2.fewshot.videos import FrameRef, InsertVideo
from sslmedsam2.runtime import autocast, device_precision

log = logging.getLogger(__name__)

OBJ_ID = 1  # one object (the liver) per video


@dataclass
class EncoderCounter:
    """Counts image-encoder passes (calls and frames) and memory-encoder calls (one frame each),
    through forward hooks on the two encoders."""

    calls: int = 0
    frames: int = 0
    memory_calls: int = 0

    def _image_hook(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self.calls += 1
        self.frames += int(args[0].shape[0])

    def _memory_hook(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self.memory_calls += 1

    @contextlib.contextmanager
    def watching(self, predictor: torch.nn.Module) -> Iterator["EncoderCounter"]:
        """Count while inside the block; the hooks are removed on exit."""
        handles = [
            predictor.image_encoder.register_forward_hook(self._image_hook),
            predictor.memory_encoder.register_forward_hook(self._memory_hook),
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()


@contextlib.contextmanager
def quiet_progress() -> Iterator[None]:
    """No tqdm bar from ``propagate_in_video`` inside the block (else one per direction per video).

    sam2 1.1.0 draws the bar unconditionally and tqdm reads ``TQDM_DISABLE`` only when imported,
    so the name sam2's module calls is bound to a disabled bar here and restored on exit. Only
    sam2's video predictor is affected, not other bars or other output on stderr.
    """
    from sam2 import sam2_video_predictor as module

    previous = module.tqdm
    module.tqdm = functools.partial(previous, disable=True)
    try:
        yield
    finally:
        module.tqdm = previous


def autocast_for(predictor: torch.nn.Module) -> contextlib.AbstractContextManager:
    """bf16 autocast on GPUs with bf16 (as SAM2's own demos run), fp16 on older GPUs, plain
    float32 on CPU (see ``runtime.precision_for``)."""
    return autocast(predictor.device, device_precision(predictor.device))


@contextlib.contextmanager
def cond_frame_limit(predictor: torch.nn.Module, limit: int | None) -> Iterator[None]:
    """Temporarily set SAM2's ``max_cond_frames_in_attn`` (None leaves the model's value).

    With a limit, each tracked frame attends only to the temporally closest prompted frames: much
    cheaper with dozens of prompted support slices, but an approximation of the paper's setting.
    """
    if limit is None:
        yield
        return
    previous = predictor.max_cond_frames_in_attn
    predictor.max_cond_frames_in_attn = int(limit)
    try:
        yield
    finally:
        predictor.max_cond_frames_in_attn = previous


@dataclass
class EncodedFrames:
    """Frames (N, 3, S, S) and their backbone outputs, one single-frame dict per frame, in the
    layout ``forward_image`` returns for a batch of one."""

    images: torch.Tensor
    features: list[dict]

    @classmethod
    @torch.inference_mode()
    def encode(
        cls, predictor: torch.nn.Module, images: torch.Tensor, batch_size: int = 8
    ) -> "EncodedFrames":
        """Run the image encoder once per frame, in batches.

        Positional encodings depend only on the feature-map shape, so frames share one copy when
        they are identical (checked, not assumed): about 85% of a frame's backbone output. The
        shared copy is cloned out of its batch, which would otherwise stay alive through it.
        """
        device = predictor.device
        images = images.to(device)
        features: list[dict] = []
        shared_pos: list[torch.Tensor] | None = None
        with autocast_for(predictor):
            for start in range(0, len(images), batch_size):
                batch = predictor.forward_image(images[start : start + batch_size].float())
                if shared_pos is None:
                    shared_pos = [pos[:1].clone() for pos in batch["vision_pos_enc"]]
                for b in range(batch["vision_features"].shape[0]):
                    features.append(_frame_features(batch, b, shared_pos))
        return cls(images=images, features=features)

    def __len__(self) -> int:
        return len(self.features)


def _frame_features(batch: dict, b: int, shared_pos: list[torch.Tensor]) -> dict:
    """Backbone output of frame ``b`` of a batch, sharing positional encodings when equal."""
    pos = [
        shared if torch.equal(level[b], shared[0]) else level[b : b + 1]
        for level, shared in zip(batch["vision_pos_enc"], shared_pos)
    ]
    return {
        "vision_features": batch["vision_features"][b : b + 1],
        "vision_pos_enc": pos,
        "backbone_fpn": [level[b : b + 1] for level in batch["backbone_fpn"]],
    }


class VideoImages(Sequence):
    """A video's frames as a sequence of (3, S, S) tensors, looked up by reference: no copy of
    the query or support stacks per video. This is what the state's ``images`` field holds."""

    def __init__(self, frames: Sequence[FrameRef], query: torch.Tensor, support: torch.Tensor):
        self._frames = list(frames)
        self._stacks = {"query": query, "support": support}

    def __len__(self) -> int:
        return len(self._frames)

    def __getitem__(self, idx: int) -> torch.Tensor:  # type: ignore[override]
        ref = self._frames[idx]
        return self._stacks[ref.source][ref.index]


def new_inference_state(
    predictor: torch.nn.Module,
    images: Sequence[torch.Tensor],
    video_size: tuple[int, int],
    cached_features: dict[int, tuple[torch.Tensor, dict]] | None = None,
) -> dict:
    """The dict ``SAM2VideoPredictor.init_state`` builds (sam2 1.1.0), for in-memory frames.

    ``images`` must already be resized and normalised; ``video_size`` (H, W) is where outputs are
    resized back to. Unlike ``init_state`` it does not warm up frame 0 (that would be an encoder
    call); ``cached_features`` maps video frame index -> (image, backbone_out).
    """
    device = predictor.device
    return {
        "images": images,
        "num_frames": len(images),
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": int(video_size[0]),
        "video_width": int(video_size[1]),
        "device": device,
        "storage_device": device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": dict(cached_features or {}),
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }


@dataclass
class VideoInputs:
    """What one query case shares across its videos: frame stacks and, when cached, encodings.

    ``support_masks`` are (S, H, W) bool at the query's in-plane size; ``support_prompts``, when
    cached, SAM2's output of each prompted support slice at that size (``prompt_outputs``).
    """

    query: torch.Tensor
    support: torch.Tensor
    support_masks: np.ndarray
    video_size: tuple[int, int]
    query_encoded: EncodedFrames | None = None
    support_encoded: EncodedFrames | None = None
    support_prompts: dict[int, dict] | None = None

    def cached_features(self, video: InsertVideo) -> dict[int, tuple[torch.Tensor, dict]] | None:
        """Pre-filled ``cached_features`` for every frame of ``video``, or None (naive path)."""
        if self.query_encoded is None or self.support_encoded is None:
            return None
        encoded = {"query": self.query_encoded, "support": self.support_encoded}
        cache = {}
        for idx, ref in enumerate(video.frames):
            frames = encoded[ref.source]
            cache[idx] = (frames.images[ref.index][None], frames.features[ref.index])
        return cache


@torch.inference_mode()
def prompt_outputs(
    predictor: torch.nn.Module,
    encoded: EncodedFrames,
    masks: np.ndarray,
    video_size: tuple[int, int],
) -> dict[int, dict]:
    """SAM2's consolidated output (mask logits, object pointer, memory encoding) of every support
    slice with a non-empty mask, keyed by slice: made by sam2's own ``add_new_mask`` and
    ``propagate_in_video_preflight`` on a state holding the support alone.

    ``masks`` are (S, H, W) at the query's in-plane size ``video_size``, as the videos prompt.
    """
    cached = {j: (encoded.images[j][None], encoded.features[j]) for j in range(len(encoded))}
    state = new_inference_state(predictor, encoded.images, video_size, cached)
    with autocast_for(predictor):
        for j in np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)):
            mask = torch.from_numpy(masks[j])
            predictor.add_new_mask(state, frame_idx=int(j), obj_id=OBJ_ID, mask=mask)
        predictor.propagate_in_video_preflight(state)
    return dict(state["output_dict_per_obj"][0]["cond_frame_outputs"])


def add_prompt_outputs(
    predictor: torch.nn.Module, state: dict, outputs: dict[int, dict]
) -> None:
    """Put outputs from ``prompt_outputs`` (keyed by video frame) where ``add_new_mask`` leaves
    its own: the object's temporary conditioning outputs of a fresh state.

    ``propagate_in_video`` then consolidates them as usual; their memory encodings are present,
    so it runs no memory encoder on them. Frames go in ascending order, as the prompts would.
    The per-frame mask inputs ``add_new_mask`` also records are read only by prompt editing
    (clearing, removing objects), which never happens here.
    """
    obj_idx = predictor._obj_id_to_idx(state, OBJ_ID)  # what add_new_mask starts with
    temporary = state["temp_output_dict_per_obj"][obj_idx]["cond_frame_outputs"]
    for frame_idx in sorted(outputs):
        temporary[frame_idx] = dict(outputs[frame_idx])  # the state's own dict, shared tensors


def merge_directions(
    forward: dict[int, torch.Tensor], backward: dict[int, torch.Tensor]
) -> dict[int, torch.Tensor]:
    """Per-frame logits from both directions: the mean where both cover a frame, else the one."""
    merged = dict(forward)
    for idx, logits in backward.items():
        merged[idx] = (merged[idx] + logits) / 2 if idx in merged else logits
    return merged


@torch.inference_mode()
def propagate_video(
    predictor: torch.nn.Module, video: InsertVideo, inputs: VideoInputs
) -> torch.Tensor:
    """Query-slice logits (Q, H, W), float32 on CPU, for one whole-insert video.

    As in the authors' code, each direction runs on a fresh state: every prompted frame gets
    ``add_new_mask`` (or, cached, its precomputed output), then tracking runs forward from the
    first prompted frame, and (new state, prompts again) backward from the last; so the backward
    pass never sees forward outputs as memory. Logits come at the query's in-plane size (the
    state's ``video_height/width``).
    """
    wanted = set(video.query_frames)
    forward = _track(predictor, video, inputs, reverse=False, keep=wanted)
    backward = _track(predictor, video, inputs, reverse=True, keep=wanted)
    merged = merge_directions(forward, backward)
    return torch.stack([merged[idx] for idx in video.query_frames])


def _track(
    predictor: torch.nn.Module,
    video: InsertVideo,
    inputs: VideoInputs,
    reverse: bool,
    keep: set[int],
) -> dict[int, torch.Tensor]:
    """One direction on a fresh, prompted state; the (H, W) logits of the frames in ``keep``."""
    images = VideoImages(video.frames, inputs.query, inputs.support)
    state = new_inference_state(predictor, images, inputs.video_size, inputs.cached_features(video))
    out: dict[int, torch.Tensor] = {}
    with autocast_for(predictor), quiet_progress():
        _prompt(predictor, state, video, inputs)
        start = video.last_prompted if reverse else video.first_prompted
        for frame_idx, _, masks in predictor.propagate_in_video(
            state, start_frame_idx=start, reverse=reverse
        ):
            if frame_idx in keep:
                out[frame_idx] = masks[0, 0].float().cpu()
    return out


def _prompt(
    predictor: torch.nn.Module, state: dict, video: InsertVideo, inputs: VideoInputs
) -> None:
    """Mask prompts on every prompted frame: cached outputs when there are some, else sam2's own
    ``add_new_mask`` (the authors' path)."""
    if inputs.support_prompts is not None:
        outputs = {f: inputs.support_prompts[video.prompt_slice(f)] for f in video.prompted}
        add_prompt_outputs(predictor, state, outputs)
        return
    for frame_idx in video.prompted:
        mask = torch.from_numpy(inputs.support_masks[video.prompt_slice(frame_idx)])
        predictor.add_new_mask(state, frame_idx=frame_idx, obj_id=OBJ_ID, mask=mask)
