"""Stage 5 of the pipeline — model: ``HiResVLM`` (``PreTrainedModel``), its config and processor.

Importing this package registers them with transformers' Auto classes (``model.auto``); ``import
hires_vlm`` alone makes that happen once transformers' Auto classes are loaded (``auto_registration``).
"""

from .auto import register_auto_classes
from .configuration import HiResVLMConfig
from .image_processing import HiResVLMImageProcessor
from .loading import check_model_dir, load_model
from .modeling import HiResVLM, HiResVLMOutput, HiResVLMPreTrainedModel, MergedInputs
from .packing import PackingError, enable_packing
from .processing import HiResVLMProcessor

register_auto_classes()

__all__ = ["HiResVLM", "HiResVLMConfig", "HiResVLMImageProcessor", "HiResVLMOutput", "HiResVLMPreTrainedModel",
           "HiResVLMProcessor", "MergedInputs", "PackingError", "check_model_dir", "enable_packing", "load_model"]
