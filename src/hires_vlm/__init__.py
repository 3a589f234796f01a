"""hires-vlm: high-resolution LLaVA-style vision-language models (SliME, INF-LLaVA, LLaVA-1.5, LLaVA-NeXT).

The pipeline runs in one direction through five subpackages: ``imaging`` → ``vision`` →
``connectors`` → ``text`` → ``model``. Training, evaluation and data sit around it.

Importing the package registers ``model_type = "hires_vlm"`` with transformers' Auto classes
(``AutoConfig``, ``AutoModel``, ``AutoModelForImageTextToText``, ``AutoProcessor``,
``AutoImageProcessor``) — at once if they are loaded, otherwise as soon as they are, so that the
import itself stays free of torch and transformers (``auto_registration``).
"""

__version__ = "0.1.0"

from .auto_registration import register_with_transformers as _register_with_transformers

_register_with_transformers()
