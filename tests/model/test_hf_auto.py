"""A saved model through transformers' Auto classes: after ``import hires_vlm`` (which itself imports
neither torch nor transformers), and with ``trust_remote_code=True`` in a Python that never imports
hires_vlm itself; ``can_generate`` and one generation config.

The two fresh Pythons start together when the module's model is saved and run while the in-process
tests do; their tests come last and collect what they printed."""

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
)

from hires_vlm import auto_registration
from hires_vlm.model import (
    HiResVLM,
    HiResVLMConfig,
    HiResVLMImageProcessor,
    HiResVLMProcessor,
)

PROMPT = "<image>\nWhat colour is it?"
MESSAGES = """[{{"role": "user", "content": [{{"type": "image", "path": {image!r}}},
                                           {{"type": "text", "text": "\\nWhat colour is it?"}}]}}]"""

IMPORT_FIRST = """
    import json, sys
    import hires_vlm
    cheap = not {{"torch", "transformers"}} & set(sys.modules)
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageTextToText, AutoProcessor
    path = {path!r}
    objs = [AutoConfig.from_pretrained(path), AutoModel.from_pretrained(path),
            AutoModelForImageTextToText.from_pretrained(path), AutoProcessor.from_pretrained(path),
            AutoImageProcessor.from_pretrained(path)]
    print("RESULT", json.dumps({{"cheap": cheap, "classes": [type(o).__name__ for o in objs]}}))
"""

TRUST = """
    import json, sys
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, pipeline
    path = {path!r}
    try:
        AutoConfig.from_pretrained(path, trust_remote_code=False)
        refused = ""
    except ValueError as err:
        refused = str(err)
    assert "hires_vlm" not in sys.modules
    msgs = """ + MESSAGES + """
    pipe = pipeline("image-text-to-text", model=path, trust_remote_code=True)
    answer = pipe(text=msgs, max_new_tokens=5)[0]["generated_text"][-1]
    model = AutoModelForImageTextToText.from_pretrained(path, trust_remote_code=True).eval()
    proc = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    ip = AutoImageProcessor.from_pretrained(path, trust_remote_code=True)
    inputs = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    print("RESULT", json.dumps({{
        "refused": refused, "answer": answer, "can_generate": model.can_generate(), "ids": ids.tolist(),
        "classes": [type(o).__module__ + "." + type(o).__name__ for o in (model.config, model, proc, ip)],
        "registered": type(AutoConfig.from_pretrained(path, trust_remote_code=False)).__name__}}))
"""


def _image():
    im = Image.new("RGB", (250, 160), (200, 30, 30))
    im.paste((20, 20, 220), (40, 30, 140, 120))
    return im


pytestmark = pytest.mark.usefixtures("one_thread")


def _start(script: str, cwd) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(cwd / "modules"),
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=cwd, env=env, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _result(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.split("RESULT ")[-1])


@pytest.fixture(scope="module")
def saved(save_small_tiny):
    path, model, proc = save_small_tiny("hf_auto", "llava_hd", 1)
    root = path.parent
    image = root / "im.png"
    _image().save(image)
    fresh = {name: _start(script.format(path=str(path), image=str(image)), root)
             for name, script in (("import_first", IMPORT_FIRST), ("trust", TRUST))}
    yield path, model, proc, fresh
    for p in fresh.values():
        if p.poll() is None:
            p.kill()
            p.communicate()


def test_every_auto_class_loads_a_saved_model(saved):
    path, model, _, _ = saved
    assert isinstance(AutoConfig.from_pretrained(path), HiResVLMConfig)
    for auto in (AutoModel, AutoModelForImageTextToText):
        loaded = auto.from_pretrained(path)
        assert type(loaded) is HiResVLM
        assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
    assert type(AutoProcessor.from_pretrained(path)) is HiResVLMProcessor
    assert type(AutoImageProcessor.from_pretrained(path)) is HiResVLMImageProcessor


def test_saved_files_name_the_shims_and_the_shims_only_import_the_package(saved):
    path = saved[0]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["auto_map"] == {"AutoConfig": "configuration_hires_vlm.HiResVLMConfig",
                               "AutoModel": "modeling_hires_vlm.HiResVLM",
                               "AutoModelForImageTextToText": "modeling_hires_vlm.HiResVLM"}
    proc_cfg = json.loads((path / "processor_config.json").read_text())
    proc_map, image_map = proc_cfg["auto_map"], proc_cfg["image_processor"]["auto_map"]
    assert proc_map == {"AutoProcessor": "processing_hires_vlm.HiResVLMProcessor"}
    assert image_map == {"AutoImageProcessor": "image_processing_hires_vlm.HiResVLMImageProcessor", **proc_map}
    for ref in {*cfg["auto_map"].values(), *image_map.values()}:
        module, cls = ref.split(".")
        tree = ast.parse((path / f"{module}.py").read_text())
        code = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        assert len(code) == 1 and isinstance(code[0], ast.ImportFrom), module
        assert code[0].module.startswith("hires_vlm.model.") and [a.name for a in code[0].names] == [cls]


def test_can_generate_and_one_generation_config(saved):
    path, model, proc, _ = saved
    assert HiResVLM.can_generate() and model.can_generate()
    assert model.generation_config is model.language_model.generation_config
    model2 = AutoModelForImageTextToText.from_pretrained(path).eval()
    assert model2.generation_config.eos_token_id == model.language_model.generation_config.eos_token_id
    inputs = proc([PROMPT], [_image()])
    out = model2.generate(**inputs, generation_config=GenerationConfig(max_new_tokens=4, do_sample=False,
                                                                       eos_token_id=None))
    assert out.shape == (1, 4)
    assert torch.equal(out, model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=None))
    model2.generation_config = GenerationConfig(max_new_tokens=2, do_sample=False, eos_token_id=None)
    assert model2.language_model.generation_config.max_new_tokens == 2
    assert model2.generate(**inputs).shape == (1, 2)


def test_the_hook_registers_once_the_outermost_import_is_done(tmp_path, monkeypatch):
    """The deferral on a stand-in package: its 'auto' module is imported from inside 'outer', so registering
    at auto's end would meet a half-initialised 'outer'; it happens when 'outer' is done."""
    pkg = tmp_path / "hookpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "auto.py").write_text("import sys\nSEEN = 'hookpkg.outer' in sys.modules\n")
    (pkg / "outer.py").write_text("from . import auto\nfrom .auto import SEEN\n")
    calls = []
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(auto_registration, "_PACKAGES", ("hookpkg",))
    monkeypatch.setattr(auto_registration, "AUTO_MODULE", "hookpkg.auto")
    monkeypatch.setattr(auto_registration, "_state", {"registered": False, "hook": None})
    monkeypatch.setattr(auto_registration, "_register", lambda: calls.append(
        sorted(n for n, m in sys.modules.items() if n.startswith("hookpkg") and not m.__spec__._initializing)))
    for name in [n for n in sys.modules if n.startswith("hookpkg")]:
        monkeypatch.delitem(sys.modules, name)
    auto_registration.register_with_transformers()
    hook = auto_registration._state["hook"]
    try:
        assert calls == [] and hook in sys.meta_path
        import hookpkg.outer

        assert hookpkg.outer.SEEN is True
        assert calls == [["hookpkg", "hookpkg.auto"]]  # at outer's end (outer itself still marked initialising)
        assert type(hookpkg.outer.__loader__).__name__ == "SourceFileLoader"  # a loaded module keeps its loader
    finally:
        if hook in sys.meta_path:
            sys.meta_path.remove(hook)
        for name in [n for n in sys.modules if n.startswith("hookpkg")]:
            del sys.modules[name]


def test_import_hires_vlm_is_cheap_and_registers_every_auto_class(saved):
    out = _result(saved[3]["import_first"])
    assert out == {"cheap": True, "classes": ["HiResVLMConfig", "HiResVLM", "HiResVLM", "HiResVLMProcessor",
                                              "HiResVLMImageProcessor"]}


def test_trust_remote_code_in_a_python_that_never_imports_hires_vlm(saved):
    """Also the pipeline with trust_remote_code=True, and, once a shim has imported the package, the Auto
    classes without it: the registration is the package import's (transformers never registers a config)."""
    path, model, proc, fresh = saved
    out = _result(fresh["trust"])
    assert "trust_remote_code=True" in out["refused"]
    assert out["classes"] == ["hires_vlm.model.configuration.HiResVLMConfig", "hires_vlm.model.modeling.HiResVLM",
                              "hires_vlm.model.processing.HiResVLMProcessor",
                              "hires_vlm.model.image_processing.HiResVLMImageProcessor"]
    assert out["can_generate"] is True and out["registered"] == "HiResVLMConfig"
    expected = model.generate(**proc([PROMPT], [Image.open(path.parent / "im.png")]), max_new_tokens=5,
                              do_sample=False)
    assert out["ids"] == expected.tolist()
    answer = proc.tokenizer.decode(expected[0], skip_special_tokens=True)
    assert out["answer"] == {"role": "assistant", "content": answer}
