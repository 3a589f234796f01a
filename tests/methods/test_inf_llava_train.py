"""End to end: a tiny INF-LLaVA trains both stages of its recipe from the CLI on CPU, then generates."""

import json
import os
from pathlib import Path

import pytest

import hires_vlm
from hires_vlm.cli import main

CONFIG = Path(hires_vlm.__file__).parent / "configs" / "inf_llava" / "inf_llava.yaml"


@pytest.mark.slow
def test_cli_trains_both_stages_and_generates(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", str(CONFIG), "--output-dir", str(out),
               "--set", f"data.train={tiny_data}", "--set", f"data.image_folder={os.path.dirname(tiny_data)}",
               "--set", "training.max_steps=2", "--set", "training.per_device_train_batch_size=2",
               "--set", "training.logging_steps=1", "--set", "training.save_steps=1000"])
    assert rc == 0
    for stage in ("pretrain", "finetune"):
        final = out / stage / "final"
        assert (final / "config.json").is_file()
        log = json.loads((out / stage / "log_history.json").read_text())
        assert [h["step"] for h in log if "loss" in h] == [1, 2]
    components = (out / "pretrain" / "components.txt").read_text()
    assert "language_model" in components and "connector.dem" in components
    stage1 = json.loads((out / "pretrain" / "final" / "training_stage.json").read_text())
    stage2 = json.loads((out / "finetune" / "final" / "training_stage.json").read_text())
    assert stage1["template"] == "plain" and stage2["template"] == "llama3"
    assert stage1["method_runtime"] == {"canvas": "center_crop"}
    assert stage2["method_runtime"] == {"canvas": "pad_square"}
    method1 = json.loads((out / "pretrain" / "final" / "config.json").read_text())["method"]
    assert method1["canvas"] == "center_crop"
    assert stage2["trainable"] == {"connector": 2e-5, "language_model": 2e-5}
    method = json.loads((out / "finetune" / "final" / "config.json").read_text())["method"]
    assert method["name"] == "inf_llava" and method["grid_rule"] == "fixed" and method["canvas"] == "pad_square"
    capsys.readouterr()
    image = os.path.join(os.path.dirname(tiny_data), "img", "0.png")
    rc = main(["generate", "--model", str(out / "finetune" / "final"), "--image", image,
               "--prompt", "What colour is the circle?", "--max-new-tokens", "4", "--device", "cpu"])
    assert rc == 0
    printed = capsys.readouterr().out
    # The same saved model through the library: new tokens come out, and the CLI printed their text.
    from hires_vlm.imaging import load_image
    from hires_vlm.model import HiResVLM, HiResVLMProcessor

    model = HiResVLM.from_pretrained(out / "finetune" / "final").eval()
    proc = HiResVLMProcessor.from_pretrained(out / "finetune" / "final")
    batch = proc(["What colour is the circle?"], [load_image(image)])
    new = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert new.shape == (1, 4)
    greedy = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert printed.strip() == proc.batch_decode(greedy)[0].strip()
