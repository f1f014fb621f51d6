"""HeatmapEngine: images and label prompts to one raw map per label, one forward pass per image.

`heatmaps` returns the maps; `analyze` also returns, from the same forward pass, maps of background
prompts and the image-level evidence the presence decision needs (gem_engine/presence.py): the cosine of
the unmodified model's image embedding with every label's and background prompt's text embedding.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

from gem_engine import text as text_module
from gem_engine.baselines import anchor_attention_maps, patch_maps
from gem_engine.gem import (
    DEFAULT_GEM_BLOCKS,
    POS_INTERPOLATIONS,
    GemOptions,
    check_vit,
    cosine_maps,
    patch_features,
    run_streams,
)
from gem_engine.last_block import DEFAULT_NACLIP_STD, LAST_BLOCK_METHODS, LastBlockOptions, last_block_tokens
from gem_engine.models import LoadedModel, UnsupportedModelError
from gem_engine.pamr import DEFAULT_PAMR_DILATIONS, check_pamr, refine_maps
from gem_engine.preprocess import INPUT_MODES, Prepared, prepare


@dataclass
class ImageAnalysis:
    """What the engine found in one image: raw maps and image-level scores, for labels and background prompts."""

    maps: np.ndarray  # float32 [L, rows, cols], exactly what `heatmaps` returns
    background_maps: np.ndarray  # float32 [B, rows, cols], one per background prompt
    label_scores: np.ndarray  # float32 [L]: cosine of the image embedding with each label (synonyms: max)
    background_scores: np.ndarray  # float32 [B]
    logit_scale: float  # the model's own CLIP logit scale (exp of its learned log scale)
    maps_are_cosines: bool = True  # False for Grad-CAM, whose maps are gradient-weighted activations


METHODS = ("gem", "gradcam", "patch", "qk", "vv", *LAST_BLOCK_METHODS)
TOKEN_METHODS = ("gem", "patch", "qk", "vv", *LAST_BLOCK_METHODS)
REFERENCE_SIZE = 448  # the GEM reference's input resolution


@dataclass(frozen=True)
class EngineOptions:
    """Everything that shapes the maps, besides the model and the method."""

    input_mode: str = "square"
    image_size: int | None = None  # None: 448 for token methods, the model's own size for gradcam
    gem_blocks: int | None = None  # None: the reference's 6, or every block of a shallower model
    gem_iterations: int = 1
    gem_temperature: float | None = None
    templates: str = "single"
    combine: str = "mean"
    # Images (or windows) per forward pass. None: 8 on a GPU, 1 on CPU, where one 448 px image's
    # self-self attention tensors already fill the cache and bigger batches ran 12% slower per image.
    batch_size: int | None = None
    window_stride: float = 2 / 3
    window_size: int | None = None  # sliding: window edge in pixels; None: image_size
    max_side: int = 1344
    # None: the method's published choice, "dino" for naclip/sclip/clearclip, "antialias" otherwise
    pos_interpolation: str | None = None
    naclip_std: float = DEFAULT_NACLIP_STD
    pamr_iterations: int = 0  # > 0: refine the maps with PAMR, returned at the model-input resolution
    pamr_dilations: tuple[int, ...] = DEFAULT_PAMR_DILATIONS
    gradcam_layer: object | None = None
    gradcam_target: str = "cosine"
    gradcam_chunk_size: int = 64
    gradcam_capture: str | None = None


class HeatmapEngine:
    """Turns images and label prompts into raw per-label heatmaps with one of METHODS."""

    def __init__(self, loaded: LoadedModel, *, method: str = "gem", **options):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
        try:
            self.options = EngineOptions(**options)
        except TypeError as error:
            known = ", ".join(EngineOptions.__dataclass_fields__)
            raise TypeError(f"{error}; HeatmapEngine options are: {known}") from error
        opts = self.options
        if opts.input_mode not in INPUT_MODES:
            raise ValueError(f"unknown input_mode {opts.input_mode!r}: use one of {', '.join(INPUT_MODES)}")
        if opts.templates not in text_module.TEMPLATE_SETS:
            raise ValueError(f"unknown templates {opts.templates!r}: use one of {', '.join(text_module.TEMPLATE_SETS)}")
        if opts.combine not in text_module.COMBINES:
            raise ValueError(f"unknown combine {opts.combine!r}: use one of {', '.join(text_module.COMBINES)}")
        if opts.batch_size is not None and opts.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {opts.batch_size}")
        if not 0 < opts.window_stride <= 1:
            raise ValueError(f"window_stride must be in (0, 1], got {opts.window_stride}")
        if opts.pos_interpolation is not None and opts.pos_interpolation not in POS_INTERPOLATIONS:
            raise ValueError(f"unknown pos_interpolation {opts.pos_interpolation!r}: use one of "
                             f"{', '.join(POS_INTERPOLATIONS)}")
        self.pamr_dilations = check_pamr(opts.pamr_iterations, opts.pamr_dilations)
        self.pos_interpolation = opts.pos_interpolation or ("dino" if method in LAST_BLOCK_METHODS else "antialias")
        self.last_block_options = (
            LastBlockOptions(method, opts.naclip_std) if method in LAST_BLOCK_METHODS else None
        )
        self.loaded = loaded
        self.method = method
        if method in TOKEN_METHODS:
            if not loaded.is_vit:
                raise UnsupportedModelError(
                    f"method {method!r} needs an open_clip ViT with a class token, but {loaded.name} has a "
                    f"{type(loaded.model.visual).__name__} vision tower; methods that support it: gradcam"
                )
            check_vit(loaded.model.visual)
            depth = len(loaded.model.visual.transformer.resblocks)
            gem_blocks = min(DEFAULT_GEM_BLOCKS, depth) if opts.gem_blocks is None else opts.gem_blocks
            if not 1 <= gem_blocks <= depth:
                raise ValueError(f"gem_blocks must be between 1 and {depth} for {loaded.name}, got {gem_blocks}")
            if opts.gem_iterations < 0:
                raise ValueError(f"gem_iterations must be >= 0, got {opts.gem_iterations}")
            self.patch = loaded.patch_size
            self.size = opts.image_size or REFERENCE_SIZE
        else:
            if opts.input_mode != "square":
                raise ValueError("gradcam runs on square inputs at the model's own size: use input_mode='square'")
            self.patch = loaded.patch_size or (1, 1)
            self.size = opts.image_size or loaded.image_size[0]
            gem_blocks = DEFAULT_GEM_BLOCKS
        if self.size < max(self.patch):
            raise ValueError(f"image_size {self.size} is smaller than one patch {self.patch}")
        if opts.window_size is not None and opts.window_size < max(self.patch):
            raise ValueError(f"window_size {opts.window_size} is smaller than one patch {self.patch}")
        self.gem_options = GemOptions(gem_blocks, opts.gem_iterations, opts.gem_temperature)

    def text(self, prompts: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Return (embeddings [P, D], label index of each row [P], number of labels) for the prompts."""
        labels = text_module.validate_prompts(prompts)
        if self.options.combine == "mean":
            embeddings = text_module.text_embeddings(self.loaded, labels, templates=self.options.templates)
            owner = torch.arange(len(labels), device=embeddings.device)
        else:
            embeddings, owner = text_module.synonym_embeddings(self.loaded, labels, templates=self.options.templates)
        return embeddings.to(self.loaded.device), owner, len(labels)

    def heatmaps(self, images: Sequence[PIL.Image.Image], prompts: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Return per image a float32 [L, rows, cols] raw map per label: patch grid, or model input with PAMR."""
        return [maps for maps, _ in self._maps(images, prompts, want_image=False)]

    def analyze(
        self,
        images: Sequence[PIL.Image.Image],
        prompts: Sequence[Sequence[str]],
        background_prompts: Sequence[str] = (),
    ) -> list[ImageAnalysis]:
        """Return per image the label maps, the background prompts' maps and the image-level scores of both.

        One forward pass per image (window) serves all of it; with sliding windows the image embedding is
        the normalized mean of the windows' embeddings. Grad-CAM takes its image embedding from one more
        forward pass without gradients.
        """
        labels = len(text_module.validate_prompts(prompts)) if len(prompts) else 0
        asked = [*prompts, *[[prompt] for prompt in background_prompts]]
        results = self._maps(images, asked, want_image=True)
        scale = float(self.loaded.model.logit_scale.detach().exp()) if hasattr(self.loaded.model, "logit_scale") else 100.0
        return [
            ImageAnalysis(maps[:labels], maps[labels:], scores[:labels], scores[labels:], scale,
                          maps_are_cosines=self.method != "gradcam")
            for maps, scores in results
        ]

    def _maps(self, images, prompts, *, want_image: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Return per image (maps [L, rows, cols], image scores [L] or None)."""
        if isinstance(images, PIL.Image.Image):
            raise TypeError("images must be a sequence of PIL images; wrap a single image in a list")
        embeddings, owner, label_count = self.text(prompts)
        if len(images) == 0:
            return []
        prepared = [self._prepare(image) for image in images]
        runs = [self._run(item, embeddings, want_image) for item in self._windows(prepared)]
        results = self._assemble(prepared, [(chunk, maps) for chunk, maps, _ in runs])
        if self.options.pamr_iterations > 0:
            results = [self._refine(maps, item) for maps, item in zip(results, prepared, strict=True)]
        maps = [self._combine(result, owner, label_count) for result in results]
        if not want_image:
            return [(m, None) for m in maps]
        pooled = self._image_embeddings(prepared, [(chunk, image) for chunk, _, image in runs])
        text = embeddings.float().cpu()
        scores = [self._combine((text @ image)[:, None, None], owner, label_count)[:, 0, 0] for image in pooled]
        return list(zip(maps, scores, strict=True))

    def _image_embeddings(self, prepared: list[Prepared], batches) -> list[torch.Tensor]:
        """Return per image its L2-normalized image embedding [D]: the mean of its windows' normalized embeddings."""
        sums: list[torch.Tensor | None] = [None] * len(prepared)
        for chunk, embeddings in batches:
            for (image_index, _), embedding in zip(chunk, embeddings, strict=True):
                unit = torch.nn.functional.normalize(embedding.float(), dim=-1)
                sums[image_index] = unit if sums[image_index] is None else sums[image_index] + unit
        return [torch.nn.functional.normalize(total, dim=-1) for total in sums]

    def _prepare(self, image: PIL.Image.Image) -> Prepared:
        return prepare(
            image,
            mode=self.options.input_mode,
            size=self.size,
            patch=self.patch,
            mean=self.loaded.mean,
            std=self.loaded.std,
            stride=self.options.window_stride,
            max_side=self.options.max_side,
            window=self.options.window_size,
        )

    def _refine(self, maps: torch.Tensor, item: Prepared) -> torch.Tensor:
        """Return [P, H, W] maps upsampled to the model-input image and refined by PAMR on it."""
        return refine_maps(maps, item.pixels, self.options.pamr_iterations, self.pamr_dilations)

    def _windows(self, prepared: list[Prepared]):
        """Yield batches of same-shaped windows with their (image, window) owners."""
        by_shape: dict[tuple[int, ...], list[tuple[int, int]]] = defaultdict(list)
        for image_index, item in enumerate(prepared):
            for window_index, window in enumerate(item.windows):
                by_shape[tuple(window.pixels.shape)].append((image_index, window_index))
        size = self.options.batch_size or (1 if self.loaded.device.type == "cpu" else 8)
        for members in by_shape.values():
            for start in range(0, len(members), size):
                chunk = members[start : start + size]
                pixels = torch.stack([prepared[i].windows[w].pixels for i, w in chunk])
                yield chunk, pixels

    def _run(self, item, embeddings: torch.Tensor, want_image: bool = False):
        """Return (owners, maps [b, P, rows, cols], image embeddings [b, D] on CPU or None) of one batch."""
        chunk, pixels = item
        pixels = pixels.to(self.loaded.device, self.loaded.dtype)
        if self.method == "gradcam":
            from gem_engine.gradcam import gradcam_maps

            kwargs = {"target": self.options.gradcam_target, "chunk_size": self.options.gradcam_chunk_size}
            if self.options.gradcam_layer is not None:
                kwargs["layer"] = self.options.gradcam_layer
            if self.options.gradcam_capture is not None:
                kwargs["capture"] = self.options.gradcam_capture
            maps = gradcam_maps(self.loaded.model, pixels, embeddings.to(self.loaded.dtype), **kwargs)
            image = None
            if want_image:
                with torch.inference_mode():
                    image = self.loaded.model.encode_image(pixels).float().cpu()
            return chunk, maps.detach().float().cpu(), image
        with torch.inference_mode():
            maps, image = self._token_maps(pixels, embeddings, want_image)
            return chunk, maps.float().cpu(), None if image is None else image.float().cpu()

    def _token_maps(self, pixels: torch.Tensor, embeddings: torch.Tensor,
                    want_image: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        visual = self.loaded.model.visual
        interpolation = self.pos_interpolation
        if self.method == "gem":
            streams = run_streams(visual, pixels, self.gem_options, want_image=want_image,
                                  interpolation=interpolation)
            return cosine_maps(patch_features(streams.gem), embeddings, streams.grid), streams.image
        if self.last_block_options is not None:
            streams = run_streams(visual, pixels, None, want_last_qkv=True, want_last_input=True,
                                  want_image=want_image, interpolation=interpolation)
            tokens = last_block_tokens(visual, streams, self.last_block_options)
            return cosine_maps(patch_features(tokens), embeddings, streams.grid), streams.image
        needs_qkv = self.method in ("qk", "vv")
        streams = run_streams(visual, pixels, None, want_original=True, want_last_qkv=needs_qkv,
                              want_image=want_image, interpolation=interpolation)
        if self.method == "patch":
            return patch_maps(streams, embeddings), streams.image
        return anchor_attention_maps(streams, embeddings, self.method), streams.image

    def _assemble(self, prepared: list[Prepared], batches) -> list[torch.Tensor]:
        """Return per image [P, rows, cols], averaging overlapping sliding windows on the patch grid."""
        sums: list[torch.Tensor | None] = [None] * len(prepared)
        counts: list[torch.Tensor | None] = [None] * len(prepared)
        for chunk, maps in batches:
            for (image_index, window_index), window_maps in zip(chunk, maps, strict=True):
                item = prepared[image_index]
                if len(item.windows) == 1:
                    sums[image_index] = window_maps
                    continue
                if sums[image_index] is None:
                    sums[image_index] = torch.zeros(window_maps.shape[0], *item.grid)
                    counts[image_index] = torch.zeros(item.grid)
                window = item.windows[window_index]
                rows, cols = window_maps.shape[-2:]
                sums[image_index][:, window.row : window.row + rows, window.col : window.col + cols] += window_maps
                counts[image_index][window.row : window.row + rows, window.col : window.col + cols] += 1
        return [total if count is None else total / count for total, count in zip(sums, counts, strict=True)]

    def _combine(self, maps: torch.Tensor, owner: torch.Tensor, label_count: int) -> np.ndarray:
        if self.options.combine == "mean":
            return maps.numpy().astype(np.float32, copy=False)
        owner = owner.cpu()
        out = torch.full((label_count, *maps.shape[1:]), float("-inf"))
        for label in range(label_count):
            out[label] = maps[owner == label].amax(dim=0)
        return out.numpy().astype(np.float32, copy=False)
