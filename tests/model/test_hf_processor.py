"""HiResVLMProcessor as a transformers ProcessorMixin: saving and loading (and the earlier layout),
the image processor's config, transformers' call signature with any number of images, chat templates."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, ProcessorMixin

from hires_vlm.imaging import HiResImageProcessor
from hires_vlm.model import HiResVLMImageProcessor, HiResVLMProcessor
from hires_vlm.text import chat_template_jinja, get_template
from hires_vlm.tiny import build_tiny

SMALL = {"vision_hidden": 32, "vision_layers": 1, "text_hidden": 64, "text_layers": 1, "vocab_size": 300}
A, B, C = (Image.new("RGB", (250, 160), (200, 30, 30)), Image.new("RGB", (120, 300), (20, 160, 40)),
           Image.new("RGB", (112, 112), (10, 10, 230)))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved(save_small_tiny):
    return save_small_tiny("hf_proc", "llava_hd", 2)


def _same(a, b):
    assert set(a.keys()) == set(b.keys())
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _chat(*parts, system=None):
    content = [{"type": "image", "image": p} if isinstance(p, Image.Image) else {"type": "text", "text": p}
               for p in parts]
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]


def test_auto_processor_is_the_processor_not_the_tokenizer(saved):
    path, _, proc = saved
    loaded = AutoProcessor.from_pretrained(path)
    assert isinstance(loaded, ProcessorMixin) and type(loaded) is HiResVLMProcessor
    assert type(loaded.image_processor) is HiResVLMImageProcessor
    assert loaded.chat_template == chat_template_jinja(get_template("chatml"))
    assert (path / "chat_template.jinja").read_text() == loaded.chat_template
    assert loaded.config is not None and loaded.config.image_token_id == loaded.image_token_id
    _same(proc(["<image>\nWhat is it?", "Describe."], [A, None]),
          loaded(["<image>\nWhat is it?", "Describe."], [A, None]))


def test_image_processor_config_holds_what_transformers_users_expect(saved, tmp_path):
    path, model, proc = saved
    cfg = json.loads((path / "processor_config.json").read_text())["image_processor"]  # nested, as transformers 5
    assert cfg["image_processor_type"] == "HiResVLMImageProcessor" and cfg["resample"] == 3
    assert cfg["size"] == {"height": 112, "width": 112}
    assert cfg["image_mean"] == model.config.image_mean and cfg["image_std"] == model.config.image_std
    assert cfg["grid_rule"] == "anyres" and cfg["local_tiles"] is True and cfg["global_view"] == "squash"
    proc.image_processor.save_pretrained(tmp_path / "alone")  # saved alone: preprocessor_config.json
    assert json.loads((tmp_path / "alone" / "preprocessor_config.json").read_text()) == cfg
    assert AutoImageProcessor.from_pretrained(tmp_path / "alone").spec == proc.imaging_spec
    ip = AutoImageProcessor.from_pretrained(path)
    assert ip.spec == proc.imaging_spec == model.imaging_spec
    out, ref = ip([A, B], return_tensors="pt"), HiResImageProcessor(model.imaging_spec)([A, B])
    assert torch.equal(out["pixel_values"], ref.pixel_values) and out.records == ref.records
    assert out["image_sizes"].tolist() == [[250, 160], [120, 300]]
    assert AutoImageProcessor.from_pretrained(path, grid_candidates=[[2, 2]]).spec.grid_candidates == ((2, 2),)
    with pytest.raises(ValueError, match="bicubic"):
        HiResVLMImageProcessor(size=112, resample=2)


def test_processor_round_trip_and_a_processor_only_directory(saved, tmp_path):
    path, _, proc = saved
    saved_cfg = json.loads((path / "processor_config.json").read_text())
    assert saved_cfg["processor_class"] == "HiResVLMProcessor" and saved_cfg["template"] == "chatml"
    assert saved_cfg["patch_size"] == 14 and saved_cfg["method"]["name"] == "llava_hd"
    proc.save_pretrained(tmp_path / "only")
    assert not (tmp_path / "only" / "config.json").exists()
    alone = HiResVLMProcessor.from_pretrained(tmp_path / "only")
    assert alone.config is None and alone.max_visual_tokens(A.size) == proc.max_visual_tokens(A.size)
    _same(proc(["<image>\nWhat?"], [A], system="Be brief."), alone(["<image>\nWhat?"], [A], system="Be brief."))


def test_directory_of_the_earlier_layout_still_loads(saved, tmp_path):
    _, model, proc = saved
    old = tmp_path / "old"
    model.save_pretrained(old)
    proc.tokenizer.save_pretrained(old)
    (old / "processor_config.json").write_text(json.dumps({
        "processor_class": "HiResVLMProcessor", "template": "chatml", "imaging": proc.imaging_spec.to_dict(),
        "method": proc.method_config.to_dict()}))
    for loaded in (HiResVLMProcessor.from_pretrained(old), AutoProcessor.from_pretrained(old)):
        assert type(loaded) is HiResVLMProcessor and loaded.imaging_spec == proc.imaging_spec
        _same(proc(["<image>\nWhat?"], [B]), loaded(["<image>\nWhat?"], [B]))


@pytest.mark.parametrize("template", ["chatml", "vicuna_v1"])
def test_apply_chat_template_renders_the_model_template_and_tokenises_as_trained(saved, template):
    proc = saved[2] if template == "chatml" else build_tiny("llava", template=template, **SMALL)[1]
    msgs = _chat(A, "\nWhat is it?", system="Answer in one word.")
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    bos = proc.tokenizer.bos_token
    assert text == get_template(template).render([("<image>\nWhat is it?", None)], system="Answer in one word.",
                                                 bos=bos)
    encoded = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
    _same(encoded, proc(["<image>\nWhat is it?"], [A], system="Answer in one word."))
    ids = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    assert torch.equal(ids, encoded["input_ids"])
    two_turns = [*msgs, {"role": "assistant", "content": "red"}, {"role": "user", "content": "And now?"}]
    ids2 = proc.apply_chat_template(two_turns, add_generation_prompt=True, tokenize=True)[0].tolist()
    conv = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "red"},
            {"from": "human", "value": "And now?"}]
    count = [proc.max_visual_tokens(A.size)]
    assert ids2 == proc.encoder.encode(conv, count, for_generation=True, system="Answer in one word.").input_ids


def test_text_as_written_matches_the_encoder_for_chatml(saved):
    _, _, proc = saved
    msgs = _chat(A, "\nWhat is it?")
    text = proc.apply_chat_template(msgs, add_generation_prompt=True)
    _same(proc(images=A, text=text, return_tensors="pt"), proc(["<image>\nWhat is it?"], [A]))
    _same(proc(A, text), proc(images=[A], text=[text]))  # transformers' positional order (images, text)


def test_any_number_of_images_per_prompt_through_processor_and_generate(saved):
    _, model, proc = saved
    texts = [proc.apply_chat_template(_chat(A, " and ", B, "\nWhich is taller?"), add_generation_prompt=True),
             proc.apply_chat_template(_chat(C, "\nWhat colour?"), add_generation_prompt=True)]
    nested = proc(images=[[A, B], [C]], text=texts, return_tensors="pt", padding=True)
    _same(nested, proc(images=[A, B, C], text=texts))  # flat: shared out in placeholder order
    assert nested["image_sizes"].tolist() == [list(A.size), list(B.size), list(C.size)]
    views = [proc.imaging_spec.record_for(im.size).num_views for im in (A, B, C)]
    assert nested["pixel_values"].shape[0] == sum(views)
    chat = proc.apply_chat_template([_chat(A, " and ", B, "\nWhich is taller?"), _chat(C, "\nWhat colour?")],
                                    add_generation_prompt=True, tokenize=True, return_dict=True)
    _same(chat, nested)
    _same(chat, proc(["<image> and <image>\nWhich is taller?", "<image>\nWhat colour?"], [[A, B], C]))
    out = model(**nested)
    assert out.visual_tokens.tolist() == [proc.max_visual_tokens(im.size) for im in (A, B, C)]
    batch = model.generate(**nested, max_new_tokens=5, do_sample=False, eos_token_id=None)
    for i, (ims, t) in enumerate(zip([[A, B], [C]], texts)):
        single = model.generate(**proc(images=[ims], text=[t]), max_new_tokens=5, do_sample=False, eos_token_id=None)
        assert torch.equal(batch[i], single[0]), i
    assert proc.batch_decode(batch) == [proc.decode(row) for row in batch]


def test_placeholders_and_images_that_disagree_name_the_prompt(saved):
    _, _, proc = saved
    with pytest.raises(ValueError, match=r"prompt 0 has 2 '<image>' placeholder\(s\) but 1 image"):
        proc(images=[[A]], text=["<image><image> Which?"])
    with pytest.raises(ValueError, match=r"prompt 1 has 2 '<image>' placeholder\(s\) but only 1 image"):
        proc(images=[A, B], text=["<image> a", "<image><image> b"])
    with pytest.raises(ValueError, match=r"3 image\(s\) were given but the text holds 2"):
        proc(images=[A, B, C], text=["<image> a", "<image> b"])
    with pytest.raises(ValueError, match=r"prompt 1 has 1 '<image>' placeholder\(s\) but 2 image"):
        proc(["<image> a", "<image> b"], [A, [B, C]])
    with pytest.raises(ValueError, match="conversation 0"):
        proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}],
                                 add_generation_prompt=True, tokenize=True)
