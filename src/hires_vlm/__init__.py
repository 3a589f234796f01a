"""hires-vlm: high-resolution LLaVA-style vision-language models (SliME, INF-LLaVA, LLaVA-1.5, LLaVA-NeXT).

The pipeline runs in one direction through five subpackages: ``imaging`` → ``vision`` →
``connectors`` → ``text`` → ``model``. Training, evaluation and data sit around it.
"""

__version__ = "0.1.0"
