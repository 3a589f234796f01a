"""The lmms-eval wrapper: registration, loglikelihood against an independent computation, batching,
and an lmms-eval run end to end on the local-files tasks in ``tests/fixtures/lmms_task/``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if os.environ.get("HIRES_VLM_REQUIRE_LMMS_EVAL") == "1":  # scripts/test.sh installed it: a failed import fails
    import lmms_eval.api.model  # noqa: F401
else:
    pytest.importorskip(
        "lmms_eval.api.model",
        reason="lmms-eval is not installed; install it without touching torch (README, 'Evaluation'): "
        "pip install -c requirements/lock.txt -r requirements/lmms-eval.txt && "
        "pip install -c requirements/lock.txt --no-deps lmms-eval",
    )

import torch  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from hires_vlm.eval.lmms_plugin import HiResVLMLmms, manifest  # noqa: E402
from hires_vlm.eval.runner import collate_for_generation, encode_request  # noqa: E402
from hires_vlm.text import IGNORE_INDEX  # noqa: E402

TASK_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "lmms_task"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from hires_vlm.tiny import build_tiny

    model, processor = build_tiny("llava_hd")
    path = tmp_path_factory.mktemp("tiny_llava_hd_lmms")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def lm(tiny_dir):
    lm = HiResVLMLmms(pretrained=str(tiny_dir), device="cpu", batch_size="3")
    images = []
    for k, size in enumerate([(40, 30), (20, 70), (90, 20)]):
        im = Image.new("RGB", size, "white")
        ImageDraw.Draw(im).ellipse([2, 2, size[0] - 2, size[1] - 2], fill=("red", "green", "blue")[k])
        images.append(im)
    lm.task_dict = {"t": {"test": [{"image": im} for im in images]}}
    return lm


def _visual(doc):
    return [doc["image"]]


def _image(lm, doc_id):
    return lm.task_dict["t"]["test"][doc_id]["image"]


def _instance(request_type, args):
    return Instance(request_type, args, idx=0, metadata={"task": args[-2], "doc_id": args[-3], "repeats": 1})


def _ll_request(context, continuation, doc_id, task="t"):
    return _instance("loglikelihood", (context, continuation, _visual, doc_id, task, "test"))


def _reference_loglikelihood(lm, context, continuation, image):
    """Log-probability of ``continuation`` as the assistant's answer, via the *training* encoder."""
    proc, model = lm.processor, lm.model
    pixels, record = proc.image_processor.preprocess_one(image)
    count = proc.method_config.max_visual_tokens(record, proc.grid)
    enc = proc.encoder.encode([{"from": "human", "value": "<image>\n" + context},
                               {"from": "gpt", "value": continuation}], [count])
    n_scored = len(proc.tokenizer(continuation, add_special_tokens=False)["input_ids"])
    ids = torch.tensor([enc.input_ids])
    labels = torch.tensor([enc.labels])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                    image_sizes=torch.tensor([record.image_size]), labels=labels)
    logprobs = torch.log_softmax(out.logits[0, :-1].float(), -1)
    targets = out.labels[0, 1:]
    positions = torch.nonzero(targets != IGNORE_INDEX).flatten()[:n_scored]  # the answer, not <|im_end|>
    picked = logprobs[positions, targets[positions]]
    return float(picked.sum()), bool((logprobs[positions].argmax(-1) == targets[positions]).all())


def test_registered_through_the_entry_point():
    from lmms_eval.models import get_model, get_model_manifest

    assert get_model("hires_vlm") is HiResVLMLmms
    assert get_model_manifest("hires_vlm") == manifest()


def test_loglikelihood_matches_an_independent_computation(lm):
    requests = [
        _ll_request("What colour is the circle?", " red", 0),
        _ll_request("Describe the picture in detail, please.", " a green circle on white", 1),
        _ll_request("Colour?", " blue", 2),
    ]
    pairs = lm.loglikelihood_pairs(requests)  # one right-padded batch of three
    for req, (value, greedy) in zip(requests, pairs):
        context, continuation, _, doc_id, _, _ = req.args
        ref_value, ref_greedy = _reference_loglikelihood(lm, context, continuation.lstrip(), _image(lm, doc_id))
        assert value == pytest.approx(ref_value, abs=1e-3) and value < 0
        assert greedy == ref_greedy
    # The model's own greedy tokens are greedy.
    tok = lm.processor.tokenizer
    enc = encode_request(lm.processor, "Colour?", [_image(lm, 2)])
    greedy_ids = lm.model.generate(**collate_for_generation(lm.processor, [enc]), max_new_tokens=3,
                                   do_sample=False)[0].tolist()
    answer = tok.decode(greedy_ids)
    assert tok(answer, add_special_tokens=False)["input_ids"] == greedy_ids  # precondition: a clean round trip
    value, greedy = lm.loglikelihood_pairs([_ll_request("Colour?", answer, 2)])[0]
    ref_value, ref_greedy = _reference_loglikelihood(lm, "Colour?", answer, _image(lm, 2))
    assert greedy is True and ref_greedy is True and value == pytest.approx(ref_value, abs=1e-3)
    lm_nll = HiResVLMLmms.__new__(HiResVLMLmms)
    lm_nll.__dict__.update(lm.__dict__, loglikelihood_mode="nll")
    assert [p[0] for p in _unwrap(lm_nll.loglikelihood(requests))] == pytest.approx([-v for v, _ in pairs])


def _unwrap(results):
    from lmms_eval.api.instance import unwrap_generation_output

    return [unwrap_generation_output(r)[0] for r in results]


def test_evaluator_receives_tuples(lm):
    """lmms-eval 0.7.3 stringifies non-text responses; ours must reach process_results as pairs."""
    out = _unwrap(lm.loglikelihood([_ll_request("Colour?", " red", 0)]))
    assert isinstance(out[0], tuple) and isinstance(out[0][0], float) and isinstance(out[0][1], bool)


def test_generate_until_batches_like_single_requests_and_cuts_at_until(lm):
    gen = {"max_new_tokens": 6, "temperature": 0}
    requests = [_instance("generate_until", (f"Question {k}: what is drawn here?" + " Really?" * k, dict(gen),
                                             _visual, k, "t", "test")) for k in range(3)]
    batched = lm.generate_until(requests)
    single = [lm.generate_until([r])[0] for r in requests]
    assert batched == single and all(isinstance(t, str) for t in batched)
    assert len(batched[0]) >= 3
    stop = batched[0][1:3]
    cut = lm.generate_until([_instance("generate_until", (requests[0].args[0], {**gen, "until": [stop]},
                                                          _visual, 0, "t", "test"))])[0]
    assert cut == batched[0][: batched[0].index(stop)] and len(cut) < len(batched[0])


def test_generate_until_multi_round_follows_doc_to_text(lm):
    seen = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        seen.append((list(previous_output), round_idx, previous_round_info))
        done = round_idx == 2
        return [doc["image"]], f"Round {round_idx}: and now?", done, list(previous_output), {"round": round_idx}

    request = _instance("generate_until_multi_round",
                        ("Round 0: what is it?", {"max_new_tokens": 2}, _visual, doc_to_text, 1, "t", "test"))
    (rounds,) = lm.generate_until_multi_round([request])
    assert len(rounds) == 2 and all(isinstance(r, str) and r for r in rounds)
    assert seen == [([rounds[0]], 1, None), (rounds, 2, {"round": 1})]


def test_unknown_model_args_are_rejected(tiny_dir):
    with pytest.raises(ValueError, match="unknown model_args"):
        HiResVLMLmms(pretrained=str(tiny_dir), device="cpu", conv_template="vicuna")
    with pytest.raises(ValueError, match="loglikelihood='loss' is not supported"):
        HiResVLMLmms(pretrained=str(tiny_dir), device="cpu", loglikelihood="loss")


@pytest.mark.slow
def test_lmms_eval_runs_local_tasks_end_to_end(lm, tiny_dir, tmp_path):
    """``simple_evaluate(model="hires_vlm", …)`` in a fresh process on the local YAML tasks (no download)."""
    script = textwrap.dedent(f"""
        import json
        from lmms_eval.evaluator import simple_evaluate
        from lmms_eval.tasks import TaskManager

        tm = TaskManager(include_path={str(TASK_DIR)!r}, include_defaults=False)
        out = simple_evaluate(model="hires_vlm", model_args="pretrained={tiny_dir},loglikelihood=nll",
                              tasks=["hires_vlm_local_gen", "hires_vlm_local_mc"], batch_size=4, device="cpu",
                              task_manager=tm, log_samples=True, bootstrap_iters=0)
        samples = {{t: [{{"doc_id": s["doc_id"], "resps": s["resps"], "target": s["target"]}} for s in v]
                   for t, v in out["samples"].items()}}
        print("RESULT" + json.dumps({{"results": out["results"], "samples": samples}}, default=str))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "LMMS_EVAL_DATASETS_CACHE": str(tmp_path / "datasets")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    results, samples = out["results"], out["samples"]

    docs = [json.loads(x) for x in (TASK_DIR / "test.jsonl").read_text().splitlines()]
    gen = samples["hires_vlm_local_gen"]
    assert sorted(s["doc_id"] for s in gen) == list(range(len(docs)))
    assert results["hires_vlm_local_gen"]["answered,none"] == 1.0  # every doc got a non-empty answer
    assert 0.0 <= results["hires_vlm_local_gen"]["exact_match,none"] <= 1.0

    # multiple_choice: lmms-eval sent 3 loglikelihood requests per doc; recompute them here and check
    # both the values it logged and the accuracy it derived (argmin of the NLLs = argmax of logprob).
    mc = sorted(samples["hires_vlm_local_mc"], key=lambda s: s["doc_id"])
    assert len(mc) == len(docs)
    lm.task_dict["mc"] = {"test": [{"image": Image.open(TASK_DIR / d["image"]).convert("RGB")} for d in docs]}
    context = "What colour is the circle?\nAnswer with one word."
    correct = 0
    for doc, sample in zip(docs, mc):
        requests = [_ll_request(context, " " + c, sample["doc_id"], task="mc") for c in doc["choices"]]
        ours = [v for v, _ in lm.loglikelihood_pairs(requests)]
        logged = [float(r[0][0]) for r in sample["resps"]]
        assert logged == pytest.approx([-v for v in ours], abs=1e-3)
        correct += int(max(range(len(ours)), key=ours.__getitem__) == doc["label"])
    assert results["hires_vlm_local_mc"]["acc,none"] == pytest.approx(correct / len(docs))


@pytest.mark.slow
@pytest.mark.parametrize("model_args,expected_acc", [("", 1.0), (",loglikelihood=logprob", 0.0)])
def test_the_lmms_eval_cli_scores_multiple_choice_right_by_default(tiny_dir, tmp_path, model_args, expected_acc):
    """`lmms-eval --model hires_vlm` on a task whose right answer is known (one word against a 30-word
    string, see hires_vlm_local_mc_known.yaml): the default loglikelihood gives accuracy 1.0 with the
    installed lmms-eval; forcing `logprob` under its argmin scoring inverts it to 0.0."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "LMMS_EVAL_DATASETS_CACHE": str(tmp_path / "datasets")}
    cmd = [sys.executable, "-m", "lmms_eval", "--model", "hires_vlm", "--model_args", f"pretrained={tiny_dir}{model_args}",
           "--tasks", "hires_vlm_local_mc_known", "--include_path", str(TASK_DIR), "--batch_size", "2",
           "--device", "cpu", "--output_path", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(out.rglob("*results*.json"))
    assert files, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(files[-1].read_text())["results"]["hires_vlm_local_mc_known"]
    assert results["acc,none"] == expected_acc


LAUNCH = """
import logging
import sys

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
from lmms_eval.__main__ import cli_evaluate

sys.exit(cli_evaluate())
"""


@pytest.mark.slow
def test_lmms_eval_under_torchrun_shards_the_requests_by_rank(tiny_dir, tmp_path):
    """2 CPU processes: each rank gets half of the requests (lmms-eval shards by the plugin's rank and
    world size, read from torchrun's / accelerate's RANK and WORLD_SIZE), and the score is the whole's."""
    launch = tmp_path / "launch.py"
    launch.write_text(LAUNCH)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "LMMS_EVAL_DATASETS_CACHE": str(tmp_path / "d")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29571",
           str(launch), "--model", "hires_vlm", "--model_args", f"pretrained={tiny_dir}", "--tasks",
           "hires_vlm_local_mc_known", "--include_path", str(TASK_DIR), "--batch_size", "2", "--device", "cpu",
           "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    n_docs = len((TASK_DIR / "known.jsonl").read_text().splitlines())
    for rank in (0, 1):  # 2 choices per doc, half the docs per rank
        assert f"hires_vlm rank {rank} of 2: {n_docs} loglikelihood requests" in log, log[-3000:]
    files = sorted((tmp_path / "out").rglob("*results*.json"))
    assert json.loads(files[-1].read_text())["results"]["hires_vlm_local_mc_known"]["acc,none"] == 1.0
