"""Stage 4 of the pipeline — text: conversation templates, one ``<image>`` placeholder per image,
label masking (only assistant turns are learned) and truncation that never cuts an image."""

from .conversation import (
    IGNORE_INDEX,
    ConversationEncoder,
    ConversationError,
    EncodedConversation,
    PlaceholderMismatchError,
    SequenceTooLongError,
    parse_turns,
)
from .templates import IMAGE_PLACEHOLDER, TEMPLATES, Template, chat_template_jinja, get_template
from .tokenizer import add_image_token, build_bpe_tokenizer, ensure_pad_token, set_chat_template

__all__ = [
    "IGNORE_INDEX", "IMAGE_PLACEHOLDER", "TEMPLATES", "ConversationEncoder", "ConversationError",
    "EncodedConversation", "PlaceholderMismatchError", "SequenceTooLongError", "Template", "add_image_token",
    "build_bpe_tokenizer", "chat_template_jinja", "ensure_pad_token", "get_template", "parse_turns",
    "set_chat_template",
]
