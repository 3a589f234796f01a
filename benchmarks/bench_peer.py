"""Benchmark: our llava / llava_hd against transformers' own Llava / LlavaNext models, same weights, same run.

The peer is what ``hires-vlm export --format llava_hf`` makes of our model: the tiny model is saved,
exported (``export_model``, whose self-test already compares the two on a probe image), and loaded
back by transformers' ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration``
with its ``AutoProcessor`` on the PIL backend (``backend="pil"``: the pixels of our ``pillow``
resampler; the export documents the torchvision pairing). The template is ``chatml``, where our
encoder and transformers' rendered chat template give the same ids (``vicuna_v1`` may part at a
space, see ``export/llava_hf.py``); the script checks the ids and stops if they differ.

Measured round-robin in one process (A B A B …, each round in a seeded shuffled order; medians), on
``--batch`` synthetic-benchmark samples:

* **prefill**: preprocessing (our processor / the peer's chat template + processor), the forward
  (eval, no grad, all logits) and both together; checked: the ids (the peer's run of image tokens
  collapsed to our one placeholder) and max |Δlogits| over every real position, against the
  export's tolerance (``export.verify.tolerance``);
* **training step**: forward with labels + backward + AdamW step, connector and LM trainable,
  tower frozen, each side its own copy and optimizer (so their losses stay comparable step by
  step). Ours padded and packed (``packing=True``: one row, per-sample attention, ``model/packing.py``);
  the peer padded and packed the way transformers packs (``DataCollatorWithFlattening``'s
  convention: one row, restarting ``position_ids``, no mask — its SDPA then builds a block-diagonal
  ``[T x T]`` mask). The peer gets our expanded ids and labels and its own image processor's pixels.
  Checked: the first step's loss of every case, and max |Δgrad| of ours against the peer's;
* **generate**: greedy, ``--new-tokens`` each (``min_new_tokens`` = ``max_new_tokens``, EOS suppressed
  alike), KV cache on both, batched with left padding; checked: the generated ids are identical.

Ratios are ours / peer in speed (>1: ours faster). ``--profile`` adds torch.profiler's top operators
of one training step of each side. ``--device cuda`` runs the same on a GPU (written for, not run on,
this CPU-only machine); ``--attn flash_attention_2`` gives both language models FlashAttention-2, whose
varlen kernel then serves our packed rows (``cu_seq_lens``) and the peer's flattened ones.

Usage::

    python benchmarks/bench_peer.py                  # both methods, tiny model, CPU, ≈2 min
    python benchmarks/bench_peer.py --methods llava_hd --profile
    python benchmarks/bench_peer.py --device cuda
    python benchmarks/bench_peer.py --smoke          # test suite
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402

PEERS = {"llava": "LlavaForConditionalGeneration", "llava_hd": "LlavaNextForConditionalGeneration"}


def synthetic(n: int, split: str, seed: int):
    from hires_vlm.data.synthetic import FAMILIES

    families = sorted(FAMILIES)
    return [FAMILIES[families[i % len(families)]](seed=seed, index=i, split=split) for i in range(n)]


class Pair:
    """Our model and the peer, from one set of weights (saved, exported, loaded back by each library)."""

    def __init__(self, method: str, args, folder: str):
        import torch
        import transformers
        from transformers import AutoProcessor

        from hires_vlm.export import export_model
        from hires_vlm.model import load_model

        self.method, self.dev = method, torch.device(args.device)
        model, proc = C.build_model(C.method_spec(method, False), dtype="float32")
        src, out = os.path.join(folder, method), os.path.join(folder, method + "-hf")
        model.save_pretrained(src)
        proc.save_pretrained(src)
        self.report = export_model(src, out, device="cpu")  # its self-test compares the two on a probe image
        dtype = getattr(torch, args.dtype)
        self.ours, self.proc = load_model(src, device="cpu")
        self.ours = self.ours.to(device=self.dev, dtype=dtype).eval()
        self.peer = getattr(transformers, PEERS[method]).from_pretrained(out, dtype=dtype).to(self.dev).eval()
        self.peer_proc = AutoProcessor.from_pretrained(out, backend="pil")
        if args.attn != "sdpa":  # the language models' attention, on both sides alike (towers keep theirs)
            self.ours.language_model.set_attn_implementation(args.attn)
            self.peer.set_attn_implementation({"text_config": args.attn})
        self.image_id = int(self.ours.config.image_token_id)

    def sync(self):
        import torch

        if self.dev.type == "cuda":
            torch.cuda.synchronize()

    def to_dev(self, batch: dict, dtype) -> dict:
        out = {k: (v.to(self.dev) if hasattr(v, "to") else v) for k, v in batch.items()}
        if "pixel_values" in out:
            out["pixel_values"] = out["pixel_values"].to(dtype)
        return out

    # ------------------------------------------------------------------ inputs
    def ours_prompts(self, prompts, images):
        return self.proc(prompts, images)

    def peer_prompts(self, prompts, images):
        messages = [[{"role": "user", "content": [{"type": "image", "image": im}, {"type": "text", "text": "\n" + q}]}]
                    for q, im in zip(prompts, images)]
        return dict(self.peer_proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=True, return_tensors="pt",
                                                       processor_kwargs={"padding": True}))

    def training_items(self, samples) -> tuple[list[dict], list]:
        """Encoded training samples (as the data pipeline encodes them) and their images."""
        import torch

        items, images = [], []
        for s in samples:
            img = s.pil()
            b = self.proc.image_processor([img])
            counts = [self.proc.method_config.max_visual_tokens(r, self.proc.grid) for r in b.records]
            enc = self.proc.encoder.encode([{"from": "human", "value": "<image>\n" + s.question},
                                            {"from": "gpt", "value": s.answer}], counts)
            items.append({"input_ids": torch.tensor(enc.input_ids), "labels": torch.tensor(enc.labels),
                          "pixel_values": b.pixel_values, "visual": counts[0],
                          "image_sizes": torch.tensor([r.image_size for r in b.records]).reshape(-1, 2)})
            images.append(img)
        return items, images

    def peer_training_batch(self, items, images, packed: bool) -> dict:
        """The same samples for the peer: our ids and labels with each placeholder expanded to its image's
        tokens (transformers expands in the processor), the peer's own pixels; padded or flattened."""
        import torch

        from hires_vlm.text import IGNORE_INDEX

        ids, labs = [], []
        for it in items:
            x, y = it["input_ids"].tolist(), it["labels"].tolist()
            k, n = x.index(self.image_id), it["visual"]
            ids.append(x[:k] + [self.image_id] * n + x[k + 1:])
            labs.append(y[:k] + [IGNORE_INDEX] * n + y[k + 1:])
        pixels = dict(self.peer_proc.image_processor(images, return_tensors="pt"))
        if packed:  # DataCollatorWithFlattening's convention: one row, restarting positions, no mask
            flat_labels = [[IGNORE_INDEX] + y[1:] for y in labs]
            return {"input_ids": torch.tensor([sum(ids, [])]), "labels": torch.tensor([sum(flat_labels, [])]),
                    "position_ids": torch.tensor([[p for x in ids for p in range(len(x))]]), **pixels}
        width, pad = max(len(x) for x in ids), self.proc.tokenizer.pad_token_id
        return {"input_ids": torch.tensor([x + [pad] * (width - len(x)) for x in ids]),
                "labels": torch.tensor([y + [IGNORE_INDEX] * (width - len(y)) for y in labs]),
                "attention_mask": torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids]), **pixels}


# ---------------------------------------------------------------------- prefill
def measure_prefill(pair: Pair, args, prompts, images) -> dict:
    import torch

    from hires_vlm.export.verify import collapse_image_runs, tolerance

    dtype = next(pair.ours.parameters()).dtype
    ours_in = pair.to_dev(pair.ours_prompts(prompts, images), dtype)
    peer_in = pair.to_dev(pair.peer_prompts(prompts, images), dtype)

    def fwd(model, inputs):
        with torch.no_grad():
            out = model(**inputs)
        pair.sync()
        return out

    # Checks: the ids, then the logits over every real position of every sample.
    ids_equal = all(
        [t for t, m in zip(o.tolist(), om.tolist()) if m] ==
        collapse_image_runs([t for t, m in zip(p.tolist(), pm.tolist()) if m], pair.image_id)
        for o, om, p, pm in zip(ours_in["input_ids"], ours_in["attention_mask"], peer_in["input_ids"],
                                peer_in["attention_mask"]))
    if not ids_equal:
        raise SystemExit(f"{pair.method}: our ids and the peer's differ; the comparison would not be of the same "
                         "inputs (see the module docstring on templates)")
    mine, theirs = fwd(pair.ours, ours_in), fwd(pair.peer, peer_in)
    dmax, lmax = 0.0, 0.0
    for b in range(len(prompts)):
        a = mine.logits[b][mine.attention_mask[b].bool()].float()
        p = theirs.logits[b][peer_in["attention_mask"][b].bool()].float()
        dmax, lmax = max(dmax, float((a - p).abs().max())), max(lmax, float(a.abs().max()))
    fns = {
        "ours preprocess": lambda: pair.ours_prompts(prompts, images),
        "peer preprocess": lambda: pair.peer_prompts(prompts, images),
        "ours forward": lambda: fwd(pair.ours, ours_in),
        "peer forward": lambda: fwd(pair.peer, peer_in),
        "ours preprocess + forward": lambda: fwd(pair.ours, pair.to_dev(pair.ours_prompts(prompts, images), dtype)),
        "peer preprocess + forward": lambda: fwd(pair.peer, pair.to_dev(pair.peer_prompts(prompts, images), dtype)),
    }
    med = {k: C.median(v) for k, v in C.interleaved(fns, args.repeats, shuffle_seed=0).items()}
    tol = tolerance(dtype, lmax)
    return {"seconds": med, "ids_equal": ids_equal, "max_abs_dlogits": dmax, "tolerance": tol,
            "logits_equal": dmax <= tol, "tokens": int(mine.attention_mask.sum())}


# ---------------------------------------------------------------------- training step
class TrainCase:
    """One side's copy of the weights, its AdamW and its batch; ``step()`` is one training step."""

    def __init__(self, model, batch: dict, is_peer: bool, sync, **options):
        import torch

        self.model, self.batch, self.options, self.sync = copy.deepcopy(model), batch, options, sync
        self.model.train()
        tower = self.model.model.vision_tower if is_peer else self.model.vision_tower
        tower.requires_grad_(False)
        self.opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        self.losses: list[float] = []

    def forward_backward(self):
        out = self.model(**self.batch, use_cache=False, **self.options)
        out.loss.backward()
        return float(out.loss.detach())

    def step(self):
        self.losses.append(self.forward_backward())
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sync()


def _grads(model, rename=None) -> dict:
    out = {}
    for n, p in model.named_parameters():
        if p.grad is not None:
            out[rename(n) if rename else n] = p.grad.detach().float()
    return out


def measure_train(pair: Pair, args, samples) -> dict:

    from hires_vlm.data.llava_json import LlavaCollator
    from hires_vlm.export.llava_hf import weight_rules
    from hires_vlm.model import enable_packing

    dtype = next(pair.ours.parameters()).dtype
    items, images = pair.training_items(samples)
    ours_batch = pair.to_dev(LlavaCollator(pair.proc.tokenizer.pad_token_id)([dict(i) for i in items]), dtype)
    ours_batch.pop("visual", None)
    trainer_step = {"labelled_logits_only": True}  # what HiResTrainer asks of every training step
    cases = {
        "ours, padded": TrainCase(pair.ours, ours_batch, False, pair.sync, **trainer_step),
        "ours, packed": TrainCase(pair.ours, ours_batch, False, pair.sync, packing=True, **trainer_step),
        "ours, padded, all logits": TrainCase(pair.ours, ours_batch, False, pair.sync),
        "ours, packed, all logits": TrainCase(pair.ours, ours_batch, False, pair.sync, packing=True),
        "peer, padded": TrainCase(pair.peer, pair.to_dev(pair.peer_training_batch(items, images, False), dtype),
                                  True, pair.sync),
        "peer, packed": TrainCase(pair.peer, pair.to_dev(pair.peer_training_batch(items, images, True), dtype),
                                  True, pair.sync),
    }
    impl = enable_packing(cases["ours, packed"].model)
    enable_packing(cases["ours, packed, all logits"].model)
    rules = weight_rules(pair.ours)

    def rename(n):
        return next(t for t in (r.apply(n) for r in rules) if t is not None)

    first = {k: c.forward_backward() for k, c in cases.items()}  # the same weights everywhere: comparable
    ref = _grads(cases["peer, padded"].model)  # transformers' names; ours are renamed by the export's rules
    dgrad = {}
    for k, c in cases.items():
        g = _grads(c.model, None if k.startswith("peer") else rename)
        dgrad[k] = max(float((g[n] - ref[n]).abs().max()) for n in ref)
        c.opt.zero_grad(set_to_none=True)
    times = C.interleaved({k: c.step for k, c in cases.items()}, args.repeats, warmup=1, shuffle_seed=0)
    med = {k: C.median(v) for k, v in times.items()}
    # Every case took the same steps on the same batch from the same weights: the losses stay together
    # (float rounding only, growing slowly with the steps).
    steps = min(len(c.losses) for c in cases.values())
    gap = max(abs(c.losses[i] - cases["peer, padded"].losses[i]) for c in cases.values() for i in range(steps))
    loss_ref = first["ours, padded"]
    tol = 1e-4 * max(1.0, abs(loss_ref)) if dtype.itemsize >= 4 else 5e-2 * max(1.0, abs(loss_ref))
    tokens = int(ours_batch["attention_mask"].sum()) - len(items) + sum(i["visual"] for i in items)
    padded = len(items) * max(len(i["input_ids"]) - 1 + i["visual"] for i in items)
    out = {"seconds": med, "first_loss": first, "max_abs_dgrad_vs_peer_padded": dgrad, "loss_tolerance": tol,
           "losses_equal": all(abs(v - loss_ref) <= tol for v in first.values()),
           "loss_trajectories": {k: list(c.losses) for k, c in cases.items()}, "max_loss_gap": gap,
           "steps": steps, "packed_attention": impl,
           "tokens": tokens, "padded_tokens": padded}
    if args.profile:
        out["profile"] = {k: profile_step(cases[k]) for k in ("ours, packed", "peer, padded")}
    return out


def profile_step(case: TrainCase, n: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    case.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        case.step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n, max_name_column_width=44)


# ---------------------------------------------------------------------- generate
def measure_generate(pair: Pair, args, prompts, images) -> dict:
    import torch

    dtype = next(pair.ours.parameters()).dtype
    ours_in = pair.to_dev(pair.ours_prompts(prompts, images), dtype)
    peer_in = pair.to_dev(pair.peer_prompts(prompts, images), dtype)
    gen = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, use_cache=True)
    width = peer_in["input_ids"].shape[1]

    def ours():
        with torch.no_grad():
            out = pair.ours.generate(**ours_in, **gen)
        pair.sync()
        return out.tolist()

    def peer():
        with torch.no_grad():
            out = pair.peer.generate(**peer_in, **gen)
        pair.sync()
        return out[:, width:].tolist()

    a, b = ours(), peer()
    med = {k: C.median(v) for k, v in C.interleaved({"ours": ours, "peer": peer}, args.repeats, warmup=0,
                                                    shuffle_seed=0).items()}
    differ = [i for i, (x, y) in enumerate(zip(a, b)) if x != y]
    return {"seconds": med, "identical": not differ, "differing_samples": differ, "ours_ids": a, "peer_ids": b,
            "tokens": len(prompts) * args.new_tokens}


# ---------------------------------------------------------------------- report
def rows_of(method: str, r: dict) -> list[list[str]]:
    p, t, g = r["prefill"], r["train"], r["generate"]
    ps, ts, gs = p["seconds"], t["seconds"], g["seconds"]
    logits = f"logits max abs diff {p['max_abs_dlogits']:.1e} (tol {p['tolerance']:.0e}), ids equal"

    def row(what, ours_s, peer_s, check):
        return [method, what, f"{ours_s * 1e3:.1f}", f"{peer_s * 1e3:.1f}", f"**{peer_s / ours_s:.2f}×**", check]

    loss = f"first loss {t['first_loss']['peer, padded']:.4f}; max abs diff of the grads from the peer's padded: "
    rows = [row("preprocess (batch)", ps["ours preprocess"], ps["peer preprocess"], "ids equal"),
            row("forward (prefill)", ps["ours forward"], ps["peer forward"], logits),
            row("preprocess + forward", ps["ours preprocess + forward"], ps["peer preprocess + forward"], logits)]
    d = t["max_abs_dgrad_vs_peer_padded"]
    rows += [row("training step, both padded, all logits (same work)", ts["ours, padded, all logits"],
                 ts["peer, padded"], loss + f"ours {d['ours, padded, all logits']:.1e}"),
             row("training step, both padded (ours: labelled logits only)", ts["ours, padded"], ts["peer, padded"],
                 f"ours {d['ours, padded']:.1e}"),
             row("training step, ours packed / peer padded", ts["ours, packed"], ts["peer, padded"],
                 f"ours packed {d['ours, packed']:.1e}"),
             row("training step, both packed", ts["ours, packed"], ts["peer, packed"],
                 f"peer packed {d['peer, packed']:.1e}; first losses equal: {'yes' if t['losses_equal'] else 'NO'}, "
                 f"after {t['steps']} steps within {t['max_loss_gap']:.0e}")]
    n = g["tokens"]
    rows.append([method, "generate tokens/s (greedy, KV cache)", f"{n / gs['ours']:.0f} tok/s",
                 f"{n / gs['peer']:.0f} tok/s", f"**{gs['peer'] / gs['ours']:.2f}×**",
                 "generated ids identical" if g["identical"] else f"ids differ in samples {g['differing_samples']}"])
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None, help="float32 (default on CPU), bfloat16 on CUDA")
    p.add_argument("--methods", nargs="+", default=list(PEERS), choices=list(PEERS))
    p.add_argument("--attn", default="sdpa", help="the language models' attention implementation on both sides "
                   "(flash_attention_2 on a GPU: packed rows then go through its varlen kernel)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7, help="timed calls per case (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU default 1)")
    p.add_argument("--profile", action="store_true", help="torch.profiler top operators of a training step")
    p.add_argument("--smoke", action="store_true", help="batch 2, 4 new tokens, 1 repeat; test suite")
    C.add_output_arguments(p)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")
    if args.threads is None and not cuda:
        args.threads = 1
    if args.smoke:
        args.batch, args.new_tokens, args.repeats = 2, 4, 1
    import torch

    if cuda and not torch.cuda.is_available():
        p.error("--device cuda asked for but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    info = C.machine(args.device)
    C.print_header(f"Peer benchmark: ours vs transformers' {', '.join(PEERS[m] for m in args.methods)} from the same "
                   f"weights (tiny default, {args.dtype} on {args.device}); batch {args.batch} of synthetic "
                   f"benchmark samples, {args.new_tokens} new tokens", info)
    t_start = time.time()
    test = synthetic(args.batch, "test", 1)
    prompts, images = [s.question for s in test], [s.pil() for s in test]
    train = synthetic(args.batch, "train", 0)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_peer-") as folder:
        for method in args.methods:
            torch.manual_seed(0)
            pair = Pair(method, args, folder)
            results[method] = {"export_self_test": pair.report["verification"],
                               "prefill": measure_prefill(pair, args, prompts, images),
                               "train": measure_train(pair, args, train),
                               "generate": measure_generate(pair, args, prompts, images)}
            del pair
    header = ["method", "what", "ours", "peer", "ours / peer (speed)", "outputs"]
    rows = [row for m in args.methods for row in rows_of(m, results[m])]
    table = C.markdown_table(header, rows)
    print(table)
    ratios = {}
    for m in args.methods:
        r = results[m]
        ps, ts, gs = r["prefill"]["seconds"], r["train"]["seconds"], r["generate"]["seconds"]
        ratios[m] = {"prefill": ps["peer preprocess + forward"] / ps["ours preprocess + forward"],
                     "train_padded": ts["peer, padded"] / ts["ours, padded"],
                     "train_packed": ts["peer, padded"] / ts["ours, packed"],
                     "train_both_packed": ts["peer, packed"] / ts["ours, packed"],
                     "generate": gs["peer"] / gs["ours"]}
        q = ratios[m]
        t = r["train"]
        print(f"\nratio: {m} preprocess + forward, ours / {PEERS[m]} = {q['prefill']:.2f}x")
        print(f"ratio: {m} training step, ours / peer, both padded = {q['train_padded']:.2f}x; ours packed / peer "
              f"padded = {q['train_packed']:.2f}x; both packed = {q['train_both_packed']:.2f}x "
              f"(padding in the padded batch: {1 - t['tokens'] / t['padded_tokens']:.1%} of its tokens)")
        print(f"ratio: {m} generate tokens/s, ours / peer = {q['generate']:.2f}x")
        print(f"outputs: logits equal {r['prefill']['logits_equal']}, first losses equal {t['losses_equal']}, "
              f"generated ids identical {r['generate']['identical']}; export self-test passed "
              f"{r['export_self_test'].get('passed')}")
        if args.profile:
            for k, text in t["profile"].items():
                print(f"\ntorch.profiler, one training step, {m} {k}:\n{text}")
    print(f"\ntotal wall time {time.time() - t_start:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "args": vars(args), "results": results, "ratios": ratios}, f, indent=2,
                      default=str)
    if args.readme:
        section = (f"**Machine:** {C.machine_line(info)}  \n**Date:** {C.today()}  \n"
                   f"**Command:** `{C.command_line()}`  \n**Model:** tiny default (S=112, CLIP 2x64, Llama 2x128), "
                   f"{args.dtype}; batch {args.batch} of synthetic benchmark samples; {args.new_tokens} new tokens\n\n"
                   f"{table}\n")
        if args.profile:
            for m in args.methods:
                for k, text in results[m]["train"]["profile"].items():
                    section += f"\n```text\ntorch.profiler, one training step, {m} {k}:\n{text.strip()}\n```\n"
        summary = ["[bench_peer.py](bench_peer.py)",
                   "ours vs transformers' Llava / LlavaNext, same weights: prefill, training step, generate "
                   f"(tiny, {args.device})",
                   "; ".join(f"{m}: prefill {q['prefill']:.2f}×, train padded {q['train_padded']:.2f}×, packed "
                             f"{q['train_packed']:.2f}×, generate {q['generate']:.2f}×" for m, q in ratios.items()),
                   "never slower; ≥ 1.3× training packed", f"`{C.command_line()}`", C.today()]
        C.update_readme("bench_peer", section, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
