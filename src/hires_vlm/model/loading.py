"""Load a saved model directory for inference, with errors that name the directory and the fix.

One function for every command that reads a model (``generate``, ``eval``, the lmms-eval plugin,
``inspect --route``): a missing folder, a folder without ``config.json`` or without weights, or
weights that are not safetensors are reported before transformers is asked, so the user sees
what is wrong with *their* folder instead of a hub lookup error.
"""

from __future__ import annotations

import os
from pathlib import Path

DTYPES = ("float32", "bfloat16", "float16")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """``model_dir`` as a path, if it holds a hires-vlm model; else a clear ``FileNotFoundError``."""
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {os.fspath(model_dir)!r}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{os.fspath(model_dir)!r} has no config.json: it is not a saved model (give the "
                                "folder written by hires-vlm train/build/import, e.g. <run>/<stage>/final)")
    adapters = (path / "hires_lora.json").is_file() and (path / "adapter_model.safetensors").is_file()
    if not adapters and not any((path / name).is_file() for name in WEIGHT_FILES):
        legacy = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
        hint = (f"; it has {', '.join(sorted(legacy)[:3])}, which are not read (pickle): convert them with "
                "hires-vlm import" if legacy else "; was the training or saving interrupted?")
        raise FileNotFoundError(f"{os.fspath(model_dir)!r} has no weights (model.safetensors){hint}")
    return path


def load_model(model_dir: str | os.PathLike, device: str | None = None, dtype: str | None = None):
    """``(model, processor)`` from a saved model directory, in eval mode on ``device``."""
    import torch

    from .modeling import HiResVLM
    from .processing import HiResVLMProcessor

    path = check_model_dir(model_dir)
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
    kwargs = {"dtype": getattr(torch, dtype)} if dtype else {}
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    from ..train.lora import is_adapter_output, load_lora_output

    # an adapter-only LoRA output (``lora.save: adapter``) loads onto its base, merged
    model = load_lora_output(path, **kwargs) if is_adapter_output(path) else HiResVLM.from_pretrained(path, **kwargs)
    model = model.to(device).eval()
    processor = HiResVLMProcessor.from_pretrained(path)
    return model, processor


FINGERPRINT_SAMPLES = 16  # evenly spaced 64 KiB reads per weight file
_SAMPLE = 1 << 16


def model_fingerprint(model_dir: str | os.PathLike) -> str:
    """A short, cheap identity of a saved model: its JSON files, and for each safetensors file its
    name, size, header (every tensor's name, dtype, shape and offsets) and 16 evenly spaced 64 KiB
    samples of its data. Two trainings of one architecture differ in the samples; reading them costs
    about 1 MiB per file, whatever the model's size."""
    import hashlib
    import struct

    path = check_model_dir(model_dir)
    h = hashlib.sha256()
    for f in sorted(path.iterdir()):
        if f.suffix == ".json" and f.name != "import_report.json":
            h.update(f.name.encode() + b"\0" + f.read_bytes())
        elif f.suffix == ".safetensors":
            size = f.stat().st_size
            h.update(f"{f.name}\0{size}".encode())
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                h.update(fh.read(min(n, size)))
                start = 8 + n
                span = max(size - start - _SAMPLE, 0)
                for k in range(FINGERPRINT_SAMPLES):
                    fh.seek(start + span * k // max(FINGERPRINT_SAMPLES - 1, 1))
                    h.update(fh.read(_SAMPLE))
    return "sha256:" + h.hexdigest()[:24]


def state_fingerprint(model) -> str:
    """The same kind of identity for a model in memory: every tensor's name, dtype and shape, and
    4096 of its values (evenly spaced)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        flat = t.detach().reshape(-1)
        idx = torch.linspace(0, max(flat.numel() - 1, 0), min(flat.numel(), 4096)).long()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}".encode())
        h.update(flat[idx].cpu().float().numpy().tobytes())
    return "sha256:" + h.hexdigest()[:24]
