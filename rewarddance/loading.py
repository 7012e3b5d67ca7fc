"""Checks and choices made before a checkpoint loads: is the name a folder or a hub id that can be reached, is the
device there, where a quantised model goes, and which layers bitsandbytes cannot quantise on the CPU. Each failure is a
one-line error naming the input (:class:`ModelLoadError` or ``ValueError``).
"""

from __future__ import annotations

from pathlib import Path

import torch


class ModelLoadError(ValueError):
    """A checkpoint that cannot be loaded as a reward model; the message names it."""


def _check_local_weights(path: Path) -> None:
    if not any(path.glob("*.safetensors")):
        found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found {', '.join(found[:3])}: convert them to safetensors)" if found else ""
        raise ModelLoadError(f"{path}: no .safetensors weights in this model directory{hint}")


def device_map_for(device: str | torch.device) -> dict:
    """The ``device_map`` that puts a whole quantised model on ``device``: a GPU index for CUDA (``"cuda"`` without
    an index means the current device, 0 when CUDA is not initialised or absent), else the device's name."""
    device = torch.device(device)
    if device.type != "cuda":
        return {"": str(device)}
    if device.index is not None:
        return {"": device.index}
    return {"": torch.cuda.current_device() if torch.cuda.is_available() else 0}


# bitsandbytes' CPU 4-bit path (0.50) quantises a weight in blocks of 64 per row and, on CPUs with AVX512-BF16,
# repacks rows in groups of 32: a Linear whose in_features is not a multiple of 64, or whose out_features is not a
# multiple of 32, fails inside its forward ("N must be divisible by block_n", "shape '[96, 1]' is invalid").
CPU_4BIT_IN_MULTIPLE = 64
CPU_4BIT_OUT_MULTIPLE = 32


def cpu_4bit_unsupported(config) -> tuple[list[str], int]:
    """Names of the ``nn.Linear`` modules of a model built from ``config`` that bitsandbytes cannot run in 4-bit on
    the CPU, and the number of Linear modules in all. The model is built on the meta device: no weights, no memory.
    """
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config)
    linears = [(n, m) for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]
    bad = [n for n, m in linears if m.in_features % CPU_4BIT_IN_MULTIPLE or m.out_features % CPU_4BIT_OUT_MULTIPLE]
    return bad, len(linears)


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _check_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device``; a one-line error for a name torch does not know or a GPU this machine
    does not have (instead of a long traceback from the first CUDA call)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        msg = f"device: {device!r} is not a device name ({_first_line(err)}); use cpu, cuda or cuda:N"
        raise ValueError(msg) from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} asks for a GPU, but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return dev


def _looks_like_path(name: str) -> bool:
    """True for a name that can only be a folder: absolute, ``./``, ``~``, or more than one ``/`` (a hub id is
    ``name`` or ``owner/name``)."""
    return Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1 or "\\" in name


def _check_hub_id(name: str) -> None:
    """For a name that is not a local folder: a one-line :class:`ModelLoadError` when it cannot be a hub id, when
    it is not in the Hugging Face cache while offline, or when the hub cannot be reached (one quick request, instead
    of the hub client's ~30 s of retries)."""
    if _looks_like_path(name):
        raise ModelLoadError(f"{name}: no such folder")
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError as err:  # not a valid repo id
        raise ModelLoadError(f"{name}: no such folder, and not a Hugging Face model id ({_first_line(err)})") from err
    if isinstance(cached, str):
        return  # in the local cache: loads offline
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(
            f"{name}: no such folder, and not in the Hugging Face cache while offline (HF_HUB_OFFLINE is set)"
        )
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=10)
    except Exception as err:  # any transport failure: DNS, refused, timeout, proxy
        raise ModelLoadError(
            f"{name}: no such folder, and the Hugging Face hub ({constants.ENDPOINT}) cannot be reached "
            f"({_first_line(err)})"
        ) from err
