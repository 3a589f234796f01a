"""Tokenizer helpers: the ``<image>`` token, and a small byte-level BPE built offline.

The tiny default cannot download a tokenizer, so it trains one here — byte-level BPE over a fixed
corpus, deterministic, any text encodable through the 256 byte symbols — and wraps it as a
transformers fast tokenizer so that everything downstream (``save_pretrained``, chat templates,
``batch_decode``) is the ordinary ecosystem path.
"""

from __future__ import annotations

from collections.abc import Iterable

from .templates import IMAGE_PLACEHOLDER, TEMPLATES, chat_template_jinja, get_template

SPECIAL_TOKENS = [
    "<unk>", "<s>", "</s>", "<pad>", IMAGE_PLACEHOLDER,
    "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]


def add_image_token(tokenizer) -> int:
    """Make ``<image>`` one special token of ``tokenizer`` (adding it if needed); return its id.

    The caller must resize the LM's embeddings when the vocabulary grew.
    """
    vocab = tokenizer.get_vocab()
    if IMAGE_PLACEHOLDER not in vocab:
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]},
                                     replace_extra_special_tokens=False)
    ids = tokenizer(IMAGE_PLACEHOLDER, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"the tokenizer splits {IMAGE_PLACEHOLDER!r} into {ids}; it must be one special token")
    return int(ids[0])


def ensure_pad_token(tokenizer) -> None:
    """Llama-style tokenizers have no pad token; use a dedicated one rather than EOS (labels stay clean)."""
    if tokenizer.pad_token_id is None:
        if "<pad>" in tokenizer.get_vocab():
            tokenizer.pad_token = "<pad>"
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})


def set_chat_template(tokenizer, template_name: str) -> None:
    tokenizer.chat_template = chat_template_jinja(get_template(template_name))


def _default_corpus() -> list[str]:
    words = (
        "the a an is are was what which where how many of in on at to and or no yes there this that image "
        "picture photo show shows describe question answer left right top bottom middle center centre upper "
        "lower corner quadrant color colour red green blue yellow white black gray grey orange purple pink brown "
        "circle square triangle cross dot dots stripe stripes striped horizontal vertical diagonal checkerboard "
        "checker pattern patch patches glyph letter digit number count object objects shape shapes big small large "
        "tiny same different one two three four five six seven eight nine ten zero border tile tiles half halves "
        "inside outside near far above below beside next it its you your please answer with a single word "
        "A chat between curious human user artificial intelligence assistant gives helpful detailed polite answers "
        "human's user's questions system USER ASSISTANT You are helpful"
    ).split()
    sentences = [
        "What pattern is in the small patch?", "How many dots are there?", "Which quadrant holds the striped square?",
        "Is there a checkerboard patch in the image?", "What colour is the large circle?",
        "Is the big shape on the left or the right?", "Answer with a single word.",
        "Describe the image.", "top left", "top right", "bottom left", "bottom right",
    ]
    return [" ".join(words)] * 4 + sentences + list(TEMPLATES["vicuna_v1"].system.split(". "))


def build_bpe_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 1024, template: str = "chatml"):
    """Train a byte-level BPE tokenizer on ``corpus`` (deterministic) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) if corpus is not None else []
    texts += _default_corpus()
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        min_frequency=1,
    )
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<s>", "</s>", "<unk>", "<pad>")],
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    set_chat_template(fast, template)
    return fast
