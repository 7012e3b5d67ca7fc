"""Differentiable image preprocessing: the image half of each VLM family's Hugging Face processor, in torch.

ReFL alignment (DESIGN.md, "alignment" and flow step 4) maximises the reward of decoded pixels, so the gradient of
the reward must reach those pixels through the reward model's preprocessing. The stock processors work on uint8
images; here every step (resize, rescale, normalise, crop and pad, tile splitting, patchify) runs on float tensors
with autograd, and every setting is read from the checkpoint's image processor (``size``, ``image_mean``,
``patch_size``, ``max_image_size``, ``image_grid_pinpoints``, the resample filter, ...), so real hub checkpoints
get their own geometry, not the tiny test models'.

:func:`image_inputs` returns, for the images of one sample, the keys, shapes and dtypes that the stock processor
returns for them. Pixel values agree within a few units of 1/255/std: the stock processor rounds and saturates to
uint8 after every resize, this module saturates (clamps to [0, 1]) but does not round, so that gradients flow.
Integer outputs (grids, image sizes, masks) are equal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as tvF

from .images import ImageError, check_pixels

_Mode = tvF.InterpolationMode

# PIL resampling codes (PIL.Image.Resampling) -> torchvision modes, the same pairing transformers uses.
_PIL_TO_TORCHVISION = {
    0: _Mode.NEAREST_EXACT,
    1: _Mode.LANCZOS,
    2: _Mode.BILINEAR,
    3: _Mode.BICUBIC,
    4: _Mode.BOX,
    5: _Mode.HAMMING,
}
# Filters with negative lobes overshoot [0, 1]; the stock uint8 path saturates them, so we clamp.
_OVERSHOOTING = (_Mode.BICUBIC, _Mode.LANCZOS)
_TENSOR_MODES = (_Mode.NEAREST, _Mode.NEAREST_EXACT, _Mode.BILINEAR, _Mode.BICUBIC, _Mode.LANCZOS)
# Idefics3 / SmolVLM never let an edge grow past 4k pixels (transformers' MAX_IMAGE_SIZE).
_IDEFICS_MAX_EDGE = 4096


# ---------------------------------------------------------------------------------------------------- settings
class _Settings:
    """The image processor's options as a processor call applies them.

    A processor call starts from the image processor's attributes and overrides them with the processor class's
    own image defaults (e.g. ``InternVLProcessor`` always asks for ``crop_to_patches=True``).
    """

    def __init__(self, processor):
        self.image_processor = getattr(processor, "image_processor", processor)
        self.overrides: dict = {}
        own = getattr(processor, "images_kwargs", None)
        if isinstance(own, dict):
            self.overrides.update(own)
        legacy = getattr(getattr(processor, "valid_processor_kwargs", None), "_defaults", None)
        if isinstance(legacy, dict):
            self.overrides.update(legacy.get("images_kwargs", {}) or {})

    def get(self, name: str, default=None):
        value = self.overrides.get(name)
        if value is None:
            value = getattr(self.image_processor, name, None)
        return default if value is None else value

    def size(self, name: str = "size") -> dict:
        """A size option (``size``, ``crop_size``, ``max_image_size``, ...) as a plain dict without unset keys."""
        value = self.get(name)
        if value is None:
            return {}
        if isinstance(value, int):
            return {"height": value, "width": value}
        return {k: v for k, v in dict(value).items() if v is not None}

    @property
    def mode(self) -> _Mode:
        resample = self.get("resample", _Mode.BILINEAR)
        mode = resample if isinstance(resample, _Mode) else _PIL_TO_TORCHVISION.get(int(resample))
        if mode not in _TENSOR_MODES:
            raise NotImplementedError(
                f"resample={resample!r} ({mode}) has no differentiable tensor implementation; "
                "supported: nearest, bilinear, bicubic, lanczos"
            )
        return mode

    def flag(self, name: str) -> bool:
        return bool(self.get(name, False))


# ------------------------------------------------------------------------------------------------- pixel ops
def _resize(x: torch.Tensor, size: tuple[int, int], mode: _Mode) -> torch.Tensor:
    """Resize ``[..., C, H, W]`` in [0, 1] to ``size`` = (h, w) pixels, antialiased like the stock processors.

    Bicubic and Lanczos overshoot; the stock uint8 resamplers (torch's CPU kernel, like PIL's) filter the width
    first, saturate to [0, 255], then filter the height and saturate again. Doing the same two clamped passes keeps
    us within ~1 level of them on noise images, where a single 2-D float pass is off by up to 30 levels. torch has
    Lanczos on the CPU only (transformers falls back to bicubic elsewhere); we round-trip through the CPU instead so
    the filter stays the checkpoint's; autograd follows the copies.
    """
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) == (h, w):
        return x
    if mode == _Mode.LANCZOS and x.device.type != "cpu":
        return _resize(x.cpu(), (h, w), mode).to(x.device)
    if mode not in _OVERSHOOTING:
        return tvF.resize(x, [h, w], interpolation=mode, antialias=True)
    if x.shape[-1] != w:
        x = tvF.resize(x, [x.shape[-2], w], interpolation=mode, antialias=True).clamp(0.0, 1.0)
    if x.shape[-2] != h:
        x = tvF.resize(x, [h, w], interpolation=mode, antialias=True).clamp(0.0, 1.0)
    return x


def _pad(x: torch.Tensor, left: int, top: int, right: int, bottom: int, fill=0.0) -> torch.Tensor:
    """Pad ``[..., C, H, W]`` by whole pixels with a constant colour: one value or one per channel, in [0, 1]."""
    out = F.pad(x, (left, right, top, bottom))
    values = [float(fill)] if isinstance(fill, (int, float)) else [float(v) for v in fill]
    if any(values):
        colour = torch.tensor(values, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)  # [C or 1, 1, 1]
        inside = F.pad(torch.ones_like(x[..., :1, :, :]), (left, right, top, bottom))  # [..., 1, H', W']
        out = out + (1.0 - inside) * colour
    return out


def _mean_colour(settings: _Settings, mean=None) -> list[float]:
    """The mean colour as the stock processors paint it: truncated to uint8 levels, returned in [0, 1]."""
    mean = settings.get("image_mean") if mean is None else mean
    return [int(m * 255) / 255.0 for m in mean]


def _pad_to_square(x: torch.Tensor, fill) -> torch.Tensor:
    """Centre ``[C, H, W]`` on a square canvas of side max(H, W) filled with ``fill``."""
    H, W = x.shape[-2:]
    side = max(H, W)
    left, top = (side - W) // 2, (side - H) // 2
    return _pad(x, left, top, side - W - left, side - H - top, fill)


def _center_crop(x: torch.Tensor, crop: dict) -> torch.Tensor:
    """Centre-crop ``[..., C, H, W]`` to ``crop`` (height, width); a crop larger than the image pads with black."""
    ch, cw = crop["height"], crop["width"]
    H, W = x.shape[-2:]
    if ch > H or cw > W:
        left, top = max(cw - W, 0) // 2, max(ch - H, 0) // 2
        right, bottom = (max(cw - W, 0) + 1) // 2, (max(ch - H, 0) + 1) // 2
        x = _pad(x, left, top, right, bottom)
        H, W = x.shape[-2:]
    top, left = int((H - ch) / 2.0), int((W - cw) / 2.0)
    return x[..., top : top + ch, left : left + cw]


def _normalize(x: torch.Tensor, settings: _Settings) -> torch.Tensor:
    """[0, 1] pixels -> model inputs: ``(x * 255 * rescale_factor - mean) / std``, as configured."""
    if settings.flag("do_rescale"):
        x = x * (255.0 * float(settings.get("rescale_factor", 1 / 255)))
    else:
        x = x * 255.0  # the model expects raw 0-255 levels
    if settings.flag("do_normalize"):
        mean = torch.as_tensor(settings.get("image_mean"), dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        std = torch.as_tensor(settings.get("image_std"), dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
        x = (x - mean) / std
    return x


def _split_grid(x: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Cut ``[C, rows*h, cols*w]`` into row-major tiles ``[rows*cols, C, h, w]``."""
    C, H, W = x.shape
    h, w = H // rows, W // cols
    x = x.reshape(C, rows, h, cols, w)  # C, rows, h, cols, w
    return x.permute(1, 3, 0, 2, 4).reshape(rows * cols, C, h, w)


# -------------------------------------------------------------------------------------------------- geometry
def _generic_size(h: int, w: int, size: dict) -> tuple[int, int]:
    """Output (height, width) of the base torchvision image processor's resize for a ``size`` dict."""
    shortest, longest = size.get("shortest_edge"), size.get("longest_edge")
    if shortest and longest:
        from transformers.image_transforms import get_size_with_aspect_ratio

        return tuple(get_size_with_aspect_ratio((h, w), shortest, longest))
    if shortest:  # the short edge becomes `shortest`, the long one keeps the aspect ratio (rounded down)
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(shortest * long / short)
        return (new_long, shortest) if w <= h else (shortest, new_long)
    if size.get("max_height") and size.get("max_width"):
        scale = min(size["max_height"] / h, size["max_width"] / w)
        return int(h * scale), int(w * scale)
    if size.get("height") and size.get("width"):
        return size["height"], size["width"]
    raise ValueError(f"cannot resize to size={size}: expected shortest_edge, max_height/width or height/width")


def _smart_size(h: int, w: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen-VL resize target: both edges multiples of ``factor``, area within [min_pixels, max_pixels]."""
    if max(h, w) / min(h, w) > 200:
        raise ImageError(f"image of {h}x{w} pixels: Qwen-VL needs an aspect ratio below 200")
    new_h, new_w = round(h / factor) * factor, round(w / factor) * factor
    if new_h * new_w > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        new_h = max(factor, math.floor(h / beta / factor) * factor)
        new_w = max(factor, math.floor(w / beta / factor) * factor)
    elif new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        new_h = math.ceil(h * beta / factor) * factor
        new_w = math.ceil(w * beta / factor) * factor
    return new_h, new_w


def _tile_grid(h: int, w: int, tile: tuple[int, int], min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """InternVL (GOT-OCR2) canvas: (columns, rows) whose aspect ratio is closest to the image's.

    Ties go to the grid with more tiles while the image area exceeds half the canvas area.
    """
    grids = [
        (c, r) for c in range(1, max_tiles + 1) for r in range(1, max_tiles + 1) if min_tiles <= c * r <= max_tiles
    ]
    grids.sort(key=lambda g: g[0] * g[1])
    aspect, area = w / h, w * h
    best, best_diff = (1, 1), float("inf")
    for cols, rows in grids:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and area > 0.5 * tile[0] * tile[1] * cols * rows:
            best = (cols, rows)
    return best


def _idefics_size(h: int, w: int, size: dict) -> tuple[int, int]:
    """Idefics3 first resize: the long edge becomes ``longest_edge`` (the short one rounded up to even)."""
    if not size.get("longest_edge"):
        if size.get("height") and size.get("width"):
            return size["height"], size["width"]
        raise ValueError(f"Idefics3 size must have 'longest_edge' or 'height' and 'width', got {size}")
    longest, aspect = size["longest_edge"], w / h
    if w >= h:
        w = longest
        h = int(w / aspect)
        h += h % 2
    else:
        h = longest
        w = int(h * aspect)
        w += w % 2
    h, w = max(h, 1), max(w, 1)
    # then shrink so that no edge exceeds the 4k cap
    aspect = w / h
    if w >= h and w > _IDEFICS_MAX_EDGE:
        w, h = _IDEFICS_MAX_EDGE, int(_IDEFICS_MAX_EDGE / aspect)
    elif h > w and h > _IDEFICS_MAX_EDGE:
        h, w = _IDEFICS_MAX_EDGE, int(_IDEFICS_MAX_EDGE * aspect)
    return max(h, 1), max(w, 1)


def _tile_multiple_size(h: int, w: int, tile: int) -> tuple[int, int]:
    """Idefics3 second resize: both edges rounded up to multiples of the tile, long edge first."""
    aspect = w / h
    if w >= h:
        w = math.ceil(w / tile) * tile
        h = math.ceil(int(w / aspect) / tile) * tile
    else:
        h = math.ceil(h / tile) * tile
        w = math.ceil(int(h * aspect) / tile) * tile
    return h, w


def _best_resolution(h: int, w: int, candidates: Sequence[Sequence[int]]) -> tuple[int, int]:
    """LLaVA anyres: the (height, width) canvas that keeps the most image pixels, then wastes the fewest."""
    best, best_kept, best_waste = None, 0, float("inf")
    for ch, cw in candidates:
        scale = min(cw / w, ch / h)
        kept = min(int(w * scale) * int(h * scale), w * h)
        waste = ch * cw - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (ch, cw), kept, waste
    return best


def _fit_size(h: int, w: int, target: tuple[int, int]) -> tuple[int, int]:
    """Size of an ``h`` x ``w`` image scaled to fit inside ``target`` with its aspect ratio."""
    th, tw = target
    scale_w, scale_h = tw / w, th / h
    if scale_w < scale_h:
        return min(math.ceil(h * scale_w), th), tw
    return th, min(math.ceil(w * scale_h), tw)


# -------------------------------------------------------------------------------------------------- families
def _qwen_vl(images: list[torch.Tensor], s: _Settings) -> dict[str, torch.Tensor]:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL: smart resize, then flat patches grouped by merge window."""
    patch, merge, temporal = int(s.get("patch_size")), int(s.get("merge_size")), int(s.get("temporal_patch_size"))
    size = s.size()
    min_pixels = size.get("shortest_edge", s.get("min_pixels"))
    max_pixels = size.get("longest_edge", s.get("max_pixels"))
    if min_pixels is None or max_pixels is None:
        raise ValueError(f"Qwen-VL image processor needs size shortest_edge and longest_edge (pixels), got {size}")
    factor = patch * merge
    patches, grids = [], []
    for i, img in enumerate(images):
        H, W = img.shape[-2:]
        if s.flag("do_resize"):
            img = _resize(img, _smart_size(H, W, factor, min_pixels, max_pixels), s.mode)
        C, h, w = img.shape
        if h % factor or w % factor:
            raise ImageError(f"images[{i}]: {h}x{w} is not a multiple of patch_size * merge_size = {factor}")
        x = _normalize(img, s)
        gh, gw = h // patch, w // patch  # patch grid
        x = x.reshape(C, gh // merge, merge, patch, gw // merge, merge, patch)  # C, gh/m, m, p, gw/m, m, p
        x = x.permute(1, 4, 2, 5, 0, 3, 6)  # gh/m, gw/m, m, m, C, p, p: merge windows stay contiguous
        x = x.unsqueeze(5).expand(-1, -1, -1, -1, -1, temporal, -1, -1)  # gh/m, gw/m, m, m, C, T, p, p
        patches.append(x.reshape(gh * gw, C * temporal * patch * patch))  # a still image fills all T frames
        grids.append([1, gh, gw])
    device = patches[0].device
    return {"pixel_values": torch.cat(patches), "image_grid_thw": torch.tensor(grids, dtype=torch.long, device=device)}


def _internvl(images: list[torch.Tensor], s: _Settings) -> dict[str, torch.Tensor]:
    """InternVL (GOT-OCR2 processor): optional tiling to a grid of ``size`` tiles plus a thumbnail."""
    size = s.size()
    tile = (size["height"], size["width"])
    crop = s.flag("crop_to_patches")
    min_tiles, max_tiles = int(s.get("min_patches", 1)), int(s.get("max_patches", 12))
    out = []
    for img in images:
        if crop:
            cols, rows = _tile_grid(*img.shape[-2:], tile, min_tiles, max_tiles)
            canvas = _resize(img, (tile[0] * rows, tile[1] * cols), s.mode)
            tiles = _split_grid(canvas, rows, cols)  # [rows*cols, C, th, tw]
            if rows * cols > 1:
                tiles = torch.cat([tiles, _resize(img, tile, s.mode)[None]])  # + global thumbnail
        else:
            tiles = img[None]  # [1, C, H, W]
        if s.flag("do_resize"):
            tiles = _resize(tiles, tile, s.mode)
        out.append(_normalize(tiles, s))
    return {"pixel_values": torch.cat(out)}  # [tiles of all images, C, th, tw]


def _idefics3(images: list[torch.Tensor], s: _Settings) -> dict[str, torch.Tensor]:
    """Idefics3 / SmolVLM: long-edge resize, split into square tiles plus a global view, pad to one size."""
    tile = int(s.size("max_image_size")["longest_edge"])
    frames = []
    for img in images:
        if s.flag("do_resize"):
            img = _resize(img, _idefics_size(*img.shape[-2:], s.size()), s.mode)
        if s.flag("do_image_splitting"):
            img = _resize(img, _tile_multiple_size(*img.shape[-2:], tile), s.mode)
            h, w = img.shape[-2:]
            if h > tile or w > tile:
                tiles = _split_grid(img, h // tile, w // tile)  # [rows*cols, C, tile, tile]
                parts = torch.cat([tiles, _resize(img, (tile, tile), s.mode)[None]])  # + global view
            else:
                parts = img[None]
        else:
            parts = _resize(img, (tile, tile), s.mode)[None]
        frames.extend(_normalize(parts, s).unbind(0))
    if not s.flag("do_pad"):
        return {"pixel_values": torch.stack(frames)[None]}  # [1, n_frames, C, h, w]
    H, W = max(f.shape[-2] for f in frames), max(f.shape[-1] for f in frames)
    padded = torch.stack([_pad(f, 0, 0, W - f.shape[-1], H - f.shape[-2]) for f in frames])  # [n, C, H, W]
    mask = torch.zeros(1, len(frames), H, W, dtype=torch.long, device=padded.device)
    for j, f in enumerate(frames):
        mask[0, j, : f.shape[-2], : f.shape[-1]] = 1
    return {"pixel_values": padded[None], "pixel_attention_mask": mask}  # [1, n, C, H, W], [1, n, H, W]


def _llava(images: list[torch.Tensor], s: _Settings) -> dict[str, torch.Tensor]:
    """LLaVA (CLIP or LLaVA image processor): optional pad to square, resize, centre crop."""
    square = s.flag("do_pad") and hasattr(s.image_processor, "pad_to_square")
    out = []
    for img in images:
        if square:
            img = _pad_to_square(img, _mean_colour(s))
        if s.flag("do_resize"):
            img = _resize(img, _generic_size(*img.shape[-2:], s.size()), s.mode)
        if s.flag("do_center_crop"):
            img = _center_crop(img, s.size("crop_size"))
        out.append(_normalize(img, s))
    if s.flag("do_pad") and not square:  # base processors pad normalised images at the bottom right with zeros
        pad = s.size("pad_size")
        H = pad.get("height") or max(x.shape[-2] for x in out)
        W = pad.get("width") or max(x.shape[-1] for x in out)
        out = [_pad(x, 0, 0, W - x.shape[-1], H - x.shape[-2]) for x in out]
    return {"pixel_values": torch.stack(out)}  # [n, C, h, w]


def _llava_onevision(images: list[torch.Tensor], s: _Settings) -> dict[str, torch.Tensor]:
    """LLaVA-OneVision: anyres tiles for a lone image, padded squares when a sample holds several images."""
    size, crop = s.size(), s.size("crop_size")
    base = (size["height"], size["width"]) if size.get("height") else (size["shortest_edge"],) * 2
    patch = crop.get("height") or size.get("height") or size.get("shortest_edge")
    anyres = len(images) == 1  # the stock processor tiles only single-image samples
    per_image, sizes = [], []
    for img in images:
        H, W = img.shape[-2:]
        if anyres:
            canvas = _best_resolution(H, W, s.get("image_grid_pinpoints"))
            fitted = _resize(img, _fit_size(H, W, canvas), s.mode)
            fh, fw = fitted.shape[-2:]
            left, top = (canvas[1] - fw) // 2, (canvas[0] - fh) // 2
            fitted = _pad(fitted, left, top, canvas[1] - fw - left, canvas[0] - fh - top)  # black margins
            tiles = [
                fitted[:, i : i + patch, j : j + patch]
                for i in range(0, canvas[0], patch)
                for j in range(0, canvas[1], patch)
            ]
            parts = [_resize(img, base, s.mode)] + tiles  # the whole image first, then row-major tiles
        else:
            parts = [_pad_to_square(img, _mean_colour(s, s.image_processor.image_mean))]
        if s.flag("do_resize"):
            parts = [_resize(p, _generic_size(*p.shape[-2:], size), s.mode) for p in parts]
        if s.flag("do_center_crop"):
            parts = [_center_crop(p, crop) for p in parts]
        per_image.append(_normalize(torch.stack(parts), s))  # [P_i, C, h, w]
        sizes.append([H, W])
    if s.flag("do_pad"):  # zero patches up to the most patches of any image
        most = max(x.shape[0] for x in per_image)
        per_image = [F.pad(x, (0, 0, 0, 0, 0, 0, 0, most - x.shape[0])) for x in per_image]
    pixels = torch.stack(per_image)  # [n, P, C, h, w]
    return {
        "pixel_values": pixels,
        "image_sizes": torch.tensor(sizes, dtype=torch.long, device=pixels.device),  # original (H, W)
        "batch_num_images": torch.tensor([len(images)], dtype=torch.long, device=pixels.device),
    }


# ---------------------------------------------------------------------------------------------------- videos
def _qwen_video_size(s: _Settings, frames: int, h: int, w: int, factor: int, temporal: int) -> tuple[int, int]:
    """Frame size the Qwen video processors resize to. Qwen2-VL / 2.5 bound the pixels of one frame, Qwen3-VL those
    of the whole clip (its ``smart_resize`` takes the frame count); ``cap_pixels_per_frame`` shares the budget."""
    size = s.size()
    min_pixels, max_pixels = size["shortest_edge"], size["longest_edge"]
    qwen3 = type(s.image_processor).__name__.startswith("Qwen3")
    if s.flag("cap_pixels_per_frame"):
        budget = int(s.get("max_video_tokens")) * factor * factor
        if qwen3:
            max_pixels = max(min(budget, max_pixels // frames), int(min_pixels * 1.05)) * frames
        else:
            max_pixels = max(min(max_pixels, int(budget * 0.9) * temporal // frames), int(min_pixels * 1.05))
    if not qwen3:
        return _smart_size(h, w, factor, min_pixels, max_pixels)
    if frames < temporal:
        raise ImageError(f"videos: Qwen3-VL needs at least {temporal} frames per video, got {frames}")
    if h < factor or w < factor:
        scale = max(factor / h, factor / w)
        h, w = int(h * scale), int(w * scale)
    t = round(frames / temporal) * temporal
    new_h, new_w = round(h / factor) * factor, round(w / factor) * factor
    if t * new_h * new_w > max_pixels:
        beta = math.sqrt(frames * h * w / max_pixels)
        new_h = max(factor, math.floor(h / beta / factor) * factor)
        new_w = max(factor, math.floor(w / beta / factor) * factor)
    elif t * new_h * new_w < min_pixels:
        beta = math.sqrt(min_pixels / (frames * h * w))
        new_h, new_w = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return new_h, new_w


def _qwen_vl_video(videos: list[torch.Tensor], s: _Settings) -> dict[str, torch.Tensor]:
    """Qwen-VL video input: each ``[T, C, H, W]`` clip resized, normalised, padded to whole temporal patches by
    repeating its last frame, and cut into patches of ``temporal_patch_size`` frames (the stock ``patchify``)."""
    patch, merge, temporal = int(s.get("patch_size")), int(s.get("merge_size")), int(s.get("temporal_patch_size"))
    factor = patch * merge
    patches, grids = [], []
    for v in videos:
        T, C, H, W = v.shape
        if s.flag("do_resize"):
            v = _resize(v, _qwen_video_size(s, T, H, W, factor, temporal), s.mode)
        x = _normalize(v, s)
        if pad := -T % temporal:
            x = torch.cat([x, x[-1:].expand(pad, -1, -1, -1)])
        gt, (h, w) = x.shape[0] // temporal, x.shape[-2:]
        gh, gw = h // patch, w // patch
        x = x.reshape(gt, temporal, C, gh // merge, merge, patch, gw // merge, merge, patch)
        x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # gt, gh/m, gw/m, m, m, C, temporal, p, p
        patches.append(x.reshape(gt * gh * gw, C * temporal * patch * patch))
        grids.append([gt, gh, gw])
    device = patches[0].device
    grid = torch.tensor(grids, dtype=torch.long, device=device)
    return {"pixel_values_videos": torch.cat(patches), "video_grid_thw": grid}


def _llava_onevision_video(videos: list[torch.Tensor], s: _Settings) -> dict[str, torch.Tensor]:
    """LLaVA-OneVision video input: every frame resized to ``size`` and normalised, ``[n, T, C, h, w]``."""
    out = []
    for v in videos:
        if s.flag("do_resize"):
            v = _resize(v, _generic_size(*v.shape[-2:], s.size()), s.mode)
        if s.flag("do_center_crop"):
            v = _center_crop(v, s.size("crop_size"))
        out.append(_normalize(v, s))
    return {"pixel_values_videos": torch.stack(out)}


def video_inputs(processor, videos: list[torch.Tensor], family: str) -> dict[str, torch.Tensor]:
    """Model video inputs for ``videos`` (``[T, 3, H, W]`` float tensors in [0, 1], checked by the caller),
    differentiable in the pixels: what the stock processor's ``videos=`` path returns for them
    (Qwen: ``pixel_values_videos`` [patches, C*T*p*p] and ``video_grid_thw`` [n, 3]; LLaVA-OneVision:
    ``pixel_values_videos`` [n, T, C, h, w]). ``ValueError`` for a family without a native video input."""
    from .families import family_named

    fam = family_named(family)
    if fam.video is None:
        raise ValueError(f"family {family!r} has no native video input; give it the frames as images")
    return fam.video([v.float() for v in videos], _Settings(processor.video_processor))


# Which pipeline each family uses is recorded once, in ``rewarddance.families.FAMILIES`` (``Family.preprocess``).
# That module imports the pipelines above, so this one looks the families up only when asked.
SUPPORTED_FAMILIES: tuple[str, ...]  # declared for linters and readers; __getattr__ below returns it


def __getattr__(name: str):
    if name == "SUPPORTED_FAMILIES":  # the families image_inputs accepts, by name
        from .families import FAMILY_NAMES

        return FAMILY_NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _check_images(images, validate: bool = True) -> list[torch.Tensor]:
    if isinstance(images, torch.Tensor) or not isinstance(images, (list, tuple)):
        raise ImageError(f"images: expected a list of [3, H, W] tensors, got {type(images).__name__}")
    if not images:
        raise ImageError("images: the list is empty; a sample needs at least one image")
    device = None
    for i, img in enumerate(images):
        label = f"images[{i}]"
        if not isinstance(img, torch.Tensor):
            raise ImageError(f"{label}: expected a [3, H, W] tensor in [0, 1], got {type(img).__name__}")
        if img.ndim != 3 or img.shape[0] != 3 or img.shape[1] < 1 or img.shape[2] < 1:
            raise ImageError(f"{label}: expected shape [3, H, W], got {tuple(img.shape)}")
        if validate:
            check_pixels(img, label)
        if device is not None and img.device != device:
            raise ImageError(f"{label}: on {img.device}, but images[0] is on {device}; put them on one device")
        device = img.device
    return [img.float() for img in images]


def image_inputs(processor, images: list[torch.Tensor], family: str, validate: bool = True) -> dict[str, torch.Tensor]:
    """Model image inputs for the images of one sample, differentiable with respect to the pixels.

    ``processor`` is the checkpoint's processor (``AutoProcessor.from_pretrained``) or its image processor;
    ``images`` is a list of ``[3, H, W]`` float tensors in [0, 1] on one device (sizes may differ; gradients are
    kept); ``family`` is one of :data:`SUPPORTED_FAMILIES`. Returns what the stock processor returns for the image
    keys of one sample holding these images, on the images' device, pixel values float32:

    - Qwen2-VL / 2.5 / 3: ``pixel_values`` [patches, C*T*p*p], ``image_grid_thw`` [n, 3] (int64);
    - InternVL: ``pixel_values`` [tiles of all images, 3, h, w];
    - Idefics3 / SmolVLM: ``pixel_values`` [1, tiles, 3, h, w], ``pixel_attention_mask`` [1, tiles, h, w] (int64);
    - LLaVA: ``pixel_values`` [n, 3, h, w];
    - LLaVA-OneVision: ``pixel_values`` [n, patches, 3, h, w], ``image_sizes`` [n, 2] (original H, W; int64),
      ``batch_num_images`` [1] (int64).

    Raises ``ValueError`` (:class:`~rewarddance.images.ImageError` for the images) for an unknown family, a tensor
    that is not ``[3, H, W]``, values outside [0, 1] or NaN; ``NotImplementedError`` for a resample filter torch
    cannot differentiate (box, hamming). ``validate=False`` skips the scan of the values (finite, in [0, 1]) for a
    caller that has checked them already; shapes and devices are always checked.
    """
    from .families import family_named

    return family_named(family).preprocess(_check_images(images, validate), _Settings(processor))


__all__ = ["SUPPORTED_FAMILIES", "image_inputs", "video_inputs"]
