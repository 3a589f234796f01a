"""Stage 5 of the pipeline — model: ``HiResVLM`` (``PreTrainedModel``), its config and processor."""

from transformers import AutoConfig, AutoModel

from .configuration import HiResVLMConfig
from .loading import check_model_dir, load_model
from .modeling import HiResVLM, HiResVLMOutput, HiResVLMPreTrainedModel, MergedInputs
from .processing import HiResVLMProcessor

AutoConfig.register(HiResVLMConfig.model_type, HiResVLMConfig, exist_ok=True)
AutoModel.register(HiResVLMConfig, HiResVLM, exist_ok=True)

__all__ = ["HiResVLM", "HiResVLMConfig", "HiResVLMOutput", "HiResVLMPreTrainedModel", "HiResVLMProcessor",
           "MergedInputs", "check_model_dir", "load_model"]
