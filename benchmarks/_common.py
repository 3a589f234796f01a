"""Shared helpers of the benchmark scripts: machine record, timing, peak memory, GPU peaks, README rows.

Not a library module: the scripts in ``benchmarks/`` import it as ``_common`` (they run as
``python benchmarks/bench_*.py``, which puts this folder on ``sys.path``).

Peak memory
  * CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
    allocated before the measured region.
  * CPU: each case runs in its own subprocess; just before the measured region the kernel's peak-RSS
    counter is reset (``/proc/self/clear_refs`` = 5, Linux) and the peak (``VmHWM``) minus the
    resident memory at that point (``VmRSS``) is reported, i.e. how far the region pushed the
    process's resident memory. glibc's mmap threshold is fixed (``MALLOC_MMAP_THRESHOLD_``) in the
    subprocess so freed large blocks go back to the kernel at once and do not hide later peaks.
    Where ``clear_refs`` is unavailable, ``ru_maxrss`` minus the RSS before (an upper bound).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "README.md")
ROOT = os.path.dirname(HERE)

# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets. Matched
# against ``torch.cuda.get_device_name()``, longest key first (so "H100 PCIe" wins over "H100").
GPU_PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 80GB HBM3": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 756.0,  # unknown form factor: the lower (PCIe) figure, so MFU is not overstated
    "GH200": 989.0,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "RTX 3090": 71.0,
    "A6000": 155.0,
    "V100": 125.0,  # fp16 tensor cores; V100 has no bf16
    "T4": 65.0,  # fp16 tensor cores; T4 has no bf16
}


def gpu_peak_tflops(name: str) -> float | None:
    for key in sorted(GPU_PEAK_BF16_TFLOPS, key=len, reverse=True):
        if key.lower() in name.lower():
            return GPU_PEAK_BF16_TFLOPS[key]
    return None


# ---------------------------------------------------------------------- machine record
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> str:
    try:
        return "/".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def machine(device: str = "cpu") -> dict:
    import torch
    import transformers

    info = {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_avg_1_5_15": load_average(),
        "device": device,
    }
    try:
        import numpy
        import PIL

        info["numpy"], info["pillow"] = numpy.__version__, PIL.__version__
    except ImportError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_peak_bf16_tflops"] = gpu_peak_tflops(info["gpu"])
    return info


def machine_line(info: dict) -> str:
    threads = info["torch_threads"]
    parts = [f"{info['cpu']}, {info['cores']} cores ({threads} torch thread{'s' if threads != 1 else ''})"]
    if "gpu" in info:
        parts.append(f"GPU {info['gpu']}")
    parts.append(f"torch {info['torch']}, transformers {info['transformers']}")
    if "pillow" in info:
        parts.append(f"Pillow {info['pillow']}, NumPy {info['numpy']}")
    parts.append(f"load avg {info['load_avg_1_5_15']} at start")
    return "; ".join(parts)


def today() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def command_line() -> str:
    """The command that produced the figures; output-only flags (``--readme``, ``--json FILE``) left out."""
    script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
    args, skip = [], False
    for a in sys.argv[1:]:
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif a != "--readme" and not a.startswith("--json="):
            args.append(a)
    return "python " + " ".join(shlex.quote(a) for a in [script] + args)


def print_header(title: str, info: dict) -> None:
    print(f"{title}\nmachine: {machine_line(info)}\ndate: {today()}\ncommand: {command_line()}\n")


# ---------------------------------------------------------------------- inputs
def make_image(width: int, height: int, seed: int = 0):
    """A deterministic RGB test image: smooth colour gradients, a ring pattern and noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot(x - width / 2, y - height / 2)
    base = np.stack([x / max(width - 1, 1), y / max(height - 1, 1), 0.5 + 0.5 * np.sin(r / 9.0)], -1) * 200.0
    base += rng.normal(0, 20, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def clip_tower_flops(views: int, layers: int, tokens: int, hidden: int, intermediate: int) -> float:
    """Forward FLOPs (2 per multiply-add) of ``layers`` ViT layers over ``views`` views of ``tokens``
    tokens: projections 2·T·(4d² + 2·d·d_ff) and attention 4·T²·d per layer (patch embedding,
    norms and softmax left out)."""
    per_layer = 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * tokens * tokens * hidden
    return float(views) * layers * per_layer


# ---------------------------------------------------------------------- models
# Rows of the method tables: key → (label, method spec for ``resolve_method_config``).
METHODS = {
    "llava": ("llava", "llava"),
    "llava_hd": ("llava_hd", "llava_hd"),
    "monkey": ("monkey", "monkey"),
    "slime_all": ("slime (γ=1: every local token)", {"preset": "slime", "gamma": 1.0}),
    "slime": ("slime (routed, γ=0.95)", {"preset": "slime", "gamma": 0.95}),
    "inf_llava": ("inf_llava", "inf_llava"),
}
# The tiny model's tiles have 8×8 tokens: compress them 4× as the real 24×24 → 12×12 does, like the
# tiny configs in ``configs/`` (``local_queries`` / ``queries`` 16, 4 resampler heads).
TINY_OVERRIDES = {"slime": {"local_queries": 16, "resampler_heads": 4},
                  "monkey": {"queries": 16, "resampler_heads": 4}}


def method_spec(key: str, real: bool) -> dict:
    """The method spec of a ``METHODS`` key for the real geometry or the tiny model."""
    base = METHODS[key][1]
    spec = dict(base) if isinstance(base, dict) else {"preset": base}
    name = spec["preset"].split("-")[0]
    if not real:
        spec.update(TINY_OVERRIDES.get(name, {}))
    return spec

# CLIP-L/14-336 and a Llama-3-8B-shaped LM (random weights).
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu")
LLAMA_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                tie_word_embeddings=False)


def build_model(method, *, real: bool = False, device: str = "cpu", dtype: str = "float32",
                vision_layers: int | None = None, text_layers: int | None = None, max_length: int = 8192):
    """(model, processor) of ``method``: the tiny default, or (``real``) CLIP-L/14-336 + an 8B-shaped
    Llama built directly on ``device`` in ``dtype`` (no fp32 copy on the host)."""
    import torch

    dt = getattr(torch, dtype)
    if not real:
        from hires_vlm.tiny import build_tiny

        model, proc = build_tiny(method, max_length=max_length)
        return model.to(device=device, dtype=dt), proc
    from transformers import CLIPVisionConfig, GenerationConfig, LlamaConfig

    from hires_vlm.imaging import CLIP_MEAN, CLIP_STD
    from hires_vlm.methods import resolve_method_config
    from hires_vlm.model import HiResVLM, HiResVLMConfig, HiResVLMProcessor
    from hires_vlm.text import add_image_token, build_bpe_tokenizer
    from hires_vlm.tiny import stop_token_ids

    tok = build_bpe_tokenizer(None, vocab_size=1024, template="chatml")
    image_id = add_image_token(tok)
    vcfg = CLIPVisionConfig(**{**CLIP_L_336, **({"num_hidden_layers": vision_layers} if vision_layers else {})})
    tcfg = LlamaConfig(**{**LLAMA_8B, **({"num_hidden_layers": text_layers} if text_layers else {})},
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    config = HiResVLMConfig(vision_config=vcfg.to_dict(), text_config=tcfg.to_dict(),
                            method=resolve_method_config(method).bind_tokenizer(tok).to_dict(),
                            image_token_id=image_id, image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
                            max_length=max_length, template="chatml")
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dt)
    try:
        with torch.device(device):
            model = HiResVLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.language_model.generation_config = GenerationConfig(
        eos_token_id=stop_token_ids(tok, "chatml"), pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        max_new_tokens=32, do_sample=False)
    return model, HiResVLMProcessor(tok, config)


def count_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------- timing
def median(xs: list[float]) -> float:
    return statistics.median(xs)


def time_calls(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` (after the caller's warm-up)."""
    out = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                shuffle_seed: int | None = None) -> dict[str, list[float]]:
    """Time several callables round-robin (A B C A B C …) so that load from other jobs on a shared
    machine falls on all of them alike; returns the seconds of every call per name. ``shuffle_seed``:
    each round in its own (seeded) order, so that no callable always follows the same one (a case
    that frees much memory makes the next one pay the page faults)."""
    import random

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    rng = random.Random(shuffle_seed)
    for _ in range(repeats):
        order = list(fns)
        if shuffle_seed is not None:
            rng.shuffle(order)
        for k in order:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------------- peak memory (CPU)
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


class PeakRSS:
    """``with PeakRSS() as p: …`` then ``p.delta_bytes``: how far the block pushed resident memory."""

    def __enter__(self):
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.exact = True
        except OSError:
            self.exact = False
        self.base_kb = _status_kb("VmRSS") or 0
        return self

    def __exit__(self, *exc):
        if self.exact:
            hwm = _status_kb("VmHWM") or 0
        else:
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.peak_kb = hwm
        self.delta_bytes = max(0, hwm - self.base_kb) * 1024
        return False

    @property
    def method(self) -> str:
        return ("CPU: VmHWM after clear_refs=5 minus VmRSS before the region (subprocess per case)" if self.exact
                else "CPU: ru_maxrss minus VmRSS before (subprocess per case; upper bound)")


def run_subprocess_case(script: str, case_args: list[str], timeout: float | None = None) -> dict:
    """Run ``script --_case …`` in a fresh interpreter; its last stdout line is a JSON dict."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, script, *case_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": tail[:300]}
    return json.loads(lines[-1])


# ---------------------------------------------------------------------- README
def add_output_arguments(parser) -> None:
    """``--readme`` and ``--json``: what every benchmark script does with its results."""
    parser.add_argument("--readme", action="store_true", help="update this benchmark's rows in benchmarks/README.md")
    parser.add_argument("--json", help="also write the results to this file")


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def update_readme(name: str, section: str, summary_row: list[str] | None = None, path: str = README) -> None:
    """Replace the block between ``<!-- {name}:begin -->`` and ``<!-- {name}:end -->`` by ``section``
    and the summary-table row whose first cell links ``{name}.py`` by ``summary_row``."""
    with open(path) as f:
        text = f.read()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{section.strip()}\n{end}"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    if summary_row is not None:
        row = "| " + " | ".join(summary_row) + " |"
        pat = re.compile(r"^\| \[" + re.escape(name) + r"\.py\].*$", re.M)
        if pat.search(text):
            text = pat.sub(lambda _: row, text, count=1)
        else:
            marker = "<!-- summary:end -->"
            text = text.replace(marker, row + "\n" + marker) if marker in text else text + "\n" + row + "\n"
    with open(path, "w") as f:
        f.write(text)
    print(f"updated {os.path.relpath(path, ROOT)} ({name})")
