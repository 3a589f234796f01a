"""The tiny foundation: a pretrained vision tower and language model for the embedded default.

Both papers train connectors between a **frozen, pretrained** vision encoder and a **pretrained**
LLM. The embedded default does the same at toy size: :func:`build_foundation` pretrains a CLIP
vision tower contrastively on the benchmark's visual world and a Llama LM on its text side
(:mod:`.pretrain`); the result is shipped in the package (``SHIPPED``, float16 safetensors with
their hashes) and loaded into any method's tiny model by ``build_tiny(..., foundation=...)``
(:mod:`.store`). ``hires-vlm foundation build|verify`` are the commands.
"""

from .store import (
    SHIPPED,
    Foundation,
    FoundationError,
    apply_foundation,
    load_foundation,
    resolve,
    verify_files,
)

__all__ = ["SHIPPED", "Foundation", "FoundationError", "FoundationRecipe", "apply_foundation", "build_foundation",
           "load_foundation", "resolve", "verify_files"]


def __getattr__(name):  # the builder imports training code: only when asked for
    if name in ("FoundationRecipe", "build_foundation"):
        from . import pretrain

        return getattr(pretrain, name)
    raise AttributeError(name)
