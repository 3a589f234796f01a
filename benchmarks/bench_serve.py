"""Benchmark: ``hires-vlm serve`` under load, batched against the same server with batching off.

Two servers of the same saved model run side by side as ``hires-vlm serve`` subprocesses (one
torch thread each): the default (``--max-batch-size 16``, ``--batch-wait-ms 10``) and
``--no-batching``. A client in this process (asyncio, keep-alive HTTP/1.1 connections, one per
concurrent user; the standard library only, so that the client costs little CPU) sends OpenAI chat
requests — a synthetic benchmark image (168–336 px sides) as a data URL and its question,
``max_tokens`` new tokens, greedy — from ``c`` concurrent users, each sending its next request when
its answer arrives. For each concurrency the two servers are loaded in turn, round-robin over the
repeats (A B A B …), so that load from other jobs on the machine falls on both alike.

Reported per server and concurrency: requests/s (median over the repeats), p50 and p99 latency
(over every request of the repeats), generated tokens/s, the server's mean batch size (rows per
``generate`` call, from ``/health``) and errors; and the ratio batched / no batching of requests/s.
Both servers get the same requests and decode greedily, so they generate the same tokens.

``--real`` (CLIP-L/14-336 + an 8B-shaped Llama, random weights, for ``--device cuda``) builds the
model in this process and serves it from a thread here (a checkpoint of that size is not written to
disk for a benchmark); not run on this project's CPU machine.

Usage::

    python benchmarks/bench_serve.py                         # tiny llava_hd, CPU, ≈3 min
    python benchmarks/bench_serve.py --concurrency 1 4 16 --max-tokens 32
    python benchmarks/bench_serve.py --real --device cuda     # GPU (not measured here)
    python benchmarks/bench_serve.py --smoke                  # test suite
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

MODEL_NAME = "bench"
SMOKE_SIZES = {"vision_hidden": 32, "vision_layers": 1, "text_hidden": 64, "text_layers": 1, "vocab_size": 300}


# ---------------------------------------------------------------------- servers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


class SubprocessServer:
    """``hires-vlm serve`` in its own interpreter."""

    def __init__(self, model_dir: str, flags: list[str], threads: int, device: str):
        self.port = _free_port()
        cmd = [sys.executable, "-m", "hires_vlm.cli", "serve", "--model", model_dir, "--model-name", MODEL_NAME,
               "--port", str(self.port), "--threads", str(threads), "--device", device, "--log-level", "warning",
               "--no-web-demo", *flags]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.flags = flags

    def wait(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server {self.flags} exited: {self.proc.stdout.read()[-2000:]}")
            try:
                self.health()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the server {self.flags} did not start in {timeout:.0f} s") from None
                time.sleep(0.3)

    def health(self) -> dict:
        return _get_json(f"http://127.0.0.1:{self.port}/health")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class ThreadServer:
    """The server for a model built in this process (``--real``), in a thread of this process."""

    def __init__(self, model, processor, max_batch_size: int, batch_wait_ms: float):
        import uvicorn

        from hires_vlm.serve import Engine, ServeSettings, create_app

        settings = ServeSettings(model_dir="(in memory)", model_name=MODEL_NAME, max_batch_size=max_batch_size,
                                 batch_wait_ms=batch_wait_ms, web_demo=False)
        self.server = uvicorn.Server(uvicorn.Config(create_app(Engine(model, processor, settings), settings),
                                                    host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        self.flags = ["--no-batching"] if max_batch_size == 1 else []

    def wait(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the in-process server did not start")
            time.sleep(0.05)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]

    def health(self) -> dict:
        return _get_json(f"http://127.0.0.1:{self.port}/health")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


# ---------------------------------------------------------------------- the client
class Connection:
    """One keep-alive HTTP/1.1 connection: POST a body, read the whole answer (Content-Length)."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.writer.write(head + body)
        await self.writer.drain()
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        data = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None


async def _phase(port: int, payloads: list[bytes], concurrency: int, n: int) -> dict:
    latencies, tokens, errors, counter = [], [0], [0], iter(range(n))

    async def user():
        conn = Connection(port)
        try:
            for i in counter:
                t0 = time.perf_counter()
                status, data = await conn.post("/v1/chat/completions", payloads[i % len(payloads)])
                latencies.append(time.perf_counter() - t0)
                if status == 200:
                    tokens[0] += json.loads(data)["usage"]["completion_tokens"]
                else:
                    errors[0] += 1
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(user() for _ in range(concurrency)))
    return {"seconds": time.perf_counter() - t0, "latencies": latencies, "tokens": tokens[0], "errors": errors[0]}


def run_phase(server, payloads, concurrency: int, n: int) -> dict:
    before = server.health()
    out = asyncio.run(_phase(server.port, payloads, concurrency, n))
    after = server.health()
    batches = after["batches"] - before["batches"]
    out["mean_batch"] = (after["rows"] - before["rows"]) / batches if batches else 0.0
    out["busy"] = (after["busy_seconds"] - before["busy_seconds"]) / out["seconds"]
    return out


# ---------------------------------------------------------------------- workload
def payloads(n: int, max_tokens: int) -> list[bytes]:
    from hires_vlm.data.synthetic import FAMILIES

    families = sorted(FAMILIES)
    out = []
    for i in range(n):
        s = FAMILIES[families[i % len(families)]](seed=3, index=i, split="test")
        buf = io.BytesIO()
        s.pil().save(buf, "PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        out.append(json.dumps({"model": MODEL_NAME, "max_tokens": max_tokens, "temperature": 0, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": s.question}]}]}).encode())
    return out


def engine_breakdown(model, processor, work: list[bytes], max_tokens: int, sizes=(1, 8, 16), repeats: int = 3):
    """Where a batch's time goes, in this process with no server: the image path (vision tower and
    connector, ``merge_inputs``), the prefill (``generate`` of one token) and each further decode step,
    per batch size — the ceiling batching can reach on this machine, whatever the server does."""
    import torch

    from hires_vlm.serve import Engine, ServeSettings
    from hires_vlm.serve.schema import parse_chat_request

    engine = Engine(model, processor, ServeSettings(model_dir="(in memory)", model_name=MODEL_NAME))
    prepared = [engine.prepare(parse_chat_request(json.loads(w))) for w in work]
    lm, out = model.language_model, []
    with torch.inference_mode():  # one untimed call first: the first one allocates
        warm = model.merge_inputs(*engine.collate(prepared[:1]), None, padding_side="left")
        lm.generate(inputs_embeds=warm.inputs_embeds, attention_mask=warm.attention_mask, max_new_tokens=2,
                    do_sample=False)
    for bs in sizes:
        rows = [prepared[i % len(prepared)] for i in range(bs)]
        ids, mask, pixels, image_sizes = engine.collate(rows)
        t_merge, t_one, t_all = [], [], []
        with torch.inference_mode():
            for _ in range(repeats):
                t0 = time.perf_counter()
                merged = model.merge_inputs(ids, mask, pixels, image_sizes, None, padding_side="left")
                t1 = time.perf_counter()
                lm.generate(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask, max_new_tokens=1,
                            do_sample=False)
                t2 = time.perf_counter()
                lm.generate(inputs_embeds=merged.inputs_embeds, attention_mask=merged.attention_mask,
                            max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False)
                t3 = time.perf_counter()
                t_merge.append(t1 - t0), t_one.append(t2 - t1), t_all.append(t3 - t2)
        m, one, full = min(t_merge), min(t_one), min(t_all)
        step = (full - one) / max(max_tokens - 1, 1)
        real = int(merged.attention_mask.sum())
        out.append({"batch": bs, "merge_ms": m * 1e3, "prefill_ms": one * 1e3, "step_ms": step * 1e3,
                    "batch_ms": (m + full) * 1e3, "rps": bs / (m + full),
                    "sequence": int(merged.attention_mask.shape[1]),
                    "padding": 1 - real / merged.attention_mask.numel()})
    return out


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="llava_hd", choices=list(C.METHODS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 for the tiny model, bfloat16 with --real")
    p.add_argument("--real", action="store_true", help="CLIP-L/14-336 + 8B-shaped Llama, served in-process (GPU)")
    p.add_argument("--vision-layers", type=int, default=None)
    p.add_argument("--text-layers", type=int, default=None)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=16, help="requests per phase = this × max(concurrency, 4)")
    p.add_argument("--repeats", type=int, default=3, help="phases per server and concurrency (median reported)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each server (CPU default 1)")
    p.add_argument("--no-breakdown", action="store_true", help="skip the in-process engine breakdown (tiny model)")
    p.add_argument("--smoke", action="store_true", help="a small model, concurrency 1 and 4, a few requests")
    C.add_output_arguments(p)
    args = p.parse_args(argv)
    if args.smoke:
        args.concurrency, args.requests, args.repeats, args.max_tokens = [1, 4], 3, 1, 4
    if args.dtype is None:
        args.dtype = "bfloat16" if (args.real or args.device.startswith("cuda")) else "float32"
    import torch

    torch.set_num_threads(args.threads)
    info = C.machine(args.device)
    label = C.METHODS[args.method][0]
    model_name = ("CLIP-L/14-336 + 8B-shaped Llama (random weights)" if args.real else
                  "small tiny (S=112, CLIP 1x32, Llama 1x64)" if args.smoke else
                  "tiny default (S=112, CLIP 2x64, Llama 2x128)")
    C.print_header(f"hires-vlm serve: requests/s and latency, batched (max {args.max_batch_size}, wait "
                   f"{args.batch_wait_ms:g} ms) against --no-batching; {label}, {model_name}, {args.dtype} on "
                   f"{args.device}; {args.max_tokens} new tokens, greedy", info)
    work = payloads(8, args.max_tokens)
    tmp = tempfile.TemporaryDirectory(prefix="bench-serve-")
    breakdown = None
    if args.real:
        model, proc = C.build_model(C.method_spec(args.method, True), real=True, device=args.device, dtype=args.dtype,
                                    vision_layers=args.vision_layers, text_layers=args.text_layers)
        servers = {"batched": ThreadServer(model.eval(), proc, args.max_batch_size, args.batch_wait_ms),
                   "no batching": ThreadServer(model, proc, 1, 0.0)}
    else:
        from hires_vlm.tiny import build_tiny

        model, proc = build_tiny(C.method_spec(args.method, False), **(SMOKE_SIZES if args.smoke else {}))
        model.to(dtype=getattr(torch, args.dtype)).save_pretrained(tmp.name)
        proc.save_pretrained(tmp.name)
        if not args.no_breakdown:  # before the servers start: nothing else of ours runs meanwhile
            breakdown = engine_breakdown(model.eval(), proc, work, args.max_tokens,
                                         sizes=(1, 4) if args.smoke else (1, 8, 16), repeats=1 if args.smoke else 3)
            del model
        flags = ["--max-batch-size", str(args.max_batch_size), "--batch-wait-ms", str(args.batch_wait_ms)]
        servers = {"batched": SubprocessServer(tmp.name, flags, args.threads, args.device),
                   "no batching": SubprocessServer(tmp.name, ["--no-batching"], args.threads, args.device)}
    results: dict[tuple[str, int], list[dict]] = {}
    t_start = time.time()
    try:
        for s in servers.values():
            s.wait()
        for s in servers.values():  # warm-up: first calls allocate, tokenizers cache
            run_phase(s, work, 2, 4)
        for c in args.concurrency:
            n = args.requests * max(c, 4)
            for _ in range(args.repeats):
                for mode, s in servers.items():
                    results.setdefault((mode, c), []).append(run_phase(s, work, c, n))
    finally:
        for s in servers.values():
            s.stop()
        tmp.cleanup()

    header = ["concurrency", "server", "requests", "requests/s", "p50 ms", "p99 ms", "tokens/s", "mean batch",
              "worker busy", "errors"]
    rows, summary = [], {}
    for c in args.concurrency:
        for mode in servers:
            phases = results[(mode, c)]
            lat = [x for ph in phases for x in ph["latencies"]]
            rps = statistics.median(len(ph["latencies"]) / ph["seconds"] for ph in phases)
            tps = statistics.median(ph["tokens"] / ph["seconds"] for ph in phases)
            summary[(mode, c)] = {"rps": rps, "p50_ms": _percentile(lat, 0.5) * 1e3,
                                  "p99_ms": _percentile(lat, 0.99) * 1e3,
                                  "tokens_per_s": tps, "mean_batch": statistics.mean(ph["mean_batch"] for ph in phases),
                                  "busy": statistics.median(ph["busy"] for ph in phases),
                                  "rps_phases": [len(ph["latencies"]) / ph["seconds"] for ph in phases],
                                  "errors": sum(ph["errors"] for ph in phases), "requests": len(lat)}
            r = summary[(mode, c)]
            rows.append([str(c), mode, str(r["requests"]), f"{rps:.1f}", f"{r['p50_ms']:.0f}", f"{r['p99_ms']:.0f}",
                         f"{tps:.0f}", f"{r['mean_batch']:.1f}", f"{r['busy']:.0%}", str(r["errors"])])
    table = C.markdown_table(header, rows)
    print(table)
    btable = None
    if breakdown:
        base = breakdown[0]
        btable = C.markdown_table(
            ["batch", "image path ms", "prefill ms", "decode step ms", "batch ms", "requests/s", "vs batch 1",
             "sequence", "padding"],
            [[str(b["batch"]), f"{b['merge_ms']:.1f}", f"{b['prefill_ms']:.1f}", f"{b['step_ms']:.2f}",
              f"{b['batch_ms']:.0f}", f"{b['rps']:.1f}", f"{b['rps'] / base['rps']:.2f}×", str(b["sequence"]),
              f"{b['padding']:.0%}"] for b in breakdown])
        print(f"\nthe engine alone (no server; {args.max_tokens} new tokens per row):\n{btable}")
    ratios = {c: summary[("batched", c)]["rps"] / summary[("no batching", c)]["rps"] for c in args.concurrency}
    print()
    for c, ratio in ratios.items():
        print(f"ratio: requests/s batched / no batching at concurrency {c} = {ratio:.2f}x")
    top = max(args.concurrency)
    met = ratios[top] >= 3.0
    print(f"target (>= 3x at concurrency {top}): {'met' if met else 'not met'}")
    errors = sum(r["errors"] for r in summary.values())
    print(f"errors: {errors}\n\ntotal wall time {time.time() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "ratios": ratios, "engine_breakdown": breakdown,
                       "summary": {f"{m}@{c}": v for (m, c), v in summary.items()}}, f, indent=2)
    if args.readme:
        section = (f"**Machine:** {C.machine_line(info)}  \n**Date:** {C.today()}  \n"
                   f"**Command:** `{C.command_line()}`  \n**Model:** {label}, {model_name}, {args.dtype}; requests "
                   f"of one synthetic benchmark image (168–336 px sides) + its question, {args.max_tokens} new tokens, "
                   f"greedy; batched server `--max-batch-size {args.max_batch_size} --batch-wait-ms "
                   f"{args.batch_wait_ms:g}`\n\n{table}\n\n" +
                   "\n".join(f"ratio at concurrency {c}: **{r:.2f}×**  " for c, r in ratios.items()) + "\n")
        if btable:
            section += f"\nThe engine alone, in the benchmark's process before the servers start:\n\n{btable}\n"
        summary_row = ["[bench_serve.py](bench_serve.py)",
                       f"server requests/s, batched / `--no-batching` ({label}, {'real' if args.real else 'tiny'}, "
                       f"{args.device}, {args.max_tokens} new tokens)",
                       ", ".join(f"c={c}: {r:.2f}×" for c, r in ratios.items()),
                       f"≥ 3× at c={top}: {'met' if met else 'not met'}", f"`{C.command_line()}`", C.today()]
        C.update_readme("bench_serve", section, summary_row)
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
