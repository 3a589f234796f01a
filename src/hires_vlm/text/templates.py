"""Conversation templates: how turns are written around the tokens the model learns.

A template is a handful of strings. ``{content}`` / ``{system}`` mark where text goes. Only the
assistant's content and ``assistant_end`` are learned (they get labels); everything else is
context. Adding a template is one :class:`Template` entry in ``TEMPLATES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_PLACEHOLDER = "<image>"

LLAVA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA3_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass(frozen=True)
class Template:
    """The strings of one chat format.

    The text of a conversation is ``bos? + prefix(system) + Σ turns``, a turn being
    ``user.format(content) + assistant_start + answer_prefix + answer + assistant_end + after_assistant``.
    ``user_only_placeholders``: the human text is replaced by its image placeholders alone (LLaVA's
    ``plain`` pretraining format, where the model learns to caption).
    """

    name: str
    prefix: str = ""  # may contain {system}
    system: str = ""
    user: str = "{content}"
    assistant_start: str = ""
    answer_prefix: str = ""  # learned text before every answer (Vicuna's space after "ASSISTANT:")
    assistant_end: str = ""
    after_assistant: str = ""
    add_bos: bool = False
    user_only_placeholders: bool = False
    stop_strings: tuple[str, ...] = field(default_factory=tuple)

    def prefix_text(self, system: str | None = None) -> str:
        return self.prefix.format(system=self.system if system is None else system)

    def render(self, turns: list[tuple[str, str | None]], system: str | None = None, bos: str = "") -> str:
        """The whole text as one string; a last turn with answer None ends with the generation prompt."""
        out = [bos if self.add_bos else "", self.prefix_text(system)]
        for user, answer in turns:
            out.append(self.user.format(content=self.user_content(user)))
            out.append(self.assistant_start)
            if answer is not None:
                out += [self.answer_prefix + answer, self.assistant_end, self.after_assistant]
        return "".join(out)

    def user_content(self, text: str) -> str:
        if self.user_only_placeholders:
            return IMAGE_PLACEHOLDER * text.count(IMAGE_PLACEHOLDER)
        return text


TEMPLATES: dict[str, Template] = {
    # LLaVA pretraining: "<image>" + caption + "\n"; human text dropped.
    "plain": Template(name="plain", assistant_end="\n", user_only_placeholders=True),
    # Vicuna v1 as LLaVA-1.5 uses it (sep " ", sep2 "</s>").
    "vicuna_v1": Template(
        name="vicuna_v1", prefix="{system} ", system=LLAVA_SYSTEM, user="USER: {content} ",
        assistant_start="ASSISTANT:", answer_prefix=" ", assistant_end="</s>", add_bos=True, stop_strings=("</s>",),
    ),
    "llama3": Template(
        name="llama3",
        prefix="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>",
        system=LLAMA3_SYSTEM,
        user="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_start="<|start_header_id|>assistant<|end_header_id|>\n\n",
        assistant_end="<|eot_id|>",
        stop_strings=("<|eot_id|>",),
    ),
    "chatml": Template(
        name="chatml", prefix="<|im_start|>system\n{system}<|im_end|>\n", system="You are a helpful assistant.",
        user="<|im_start|>user\n{content}<|im_end|>\n", assistant_start="<|im_start|>assistant\n",
        assistant_end="<|im_end|>", after_assistant="\n", stop_strings=("<|im_end|>",),
    ),
}


def get_template(name: str) -> Template:
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"conversation template {name!r} is not supported; choose one of {sorted(TEMPLATES)}") from None


def _jinja_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")


def chat_template_jinja(template: Template) -> str:
    """A transformers ``chat_template`` that renders the same text as :meth:`Template.render`.

    Messages use the transformers schema (``role`` in system/user/assistant, ``content`` a string or
    a list of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts).
    """
    e = _jinja_escape
    content = (
        "{%- if m['content'] is string -%}{%- set c = m['content'] -%}{%- else -%}{%- set c = namespace(t='') -%}"
        "{%- for p in m['content'] -%}{%- if p['type'] == 'image' -%}{%- set c.t = c.t + '<image>' -%}"
        "{%- elif p['type'] == 'text' -%}{%- set c.t = c.t + p['text'] -%}{%- endif -%}{%- endfor -%}"
        "{%- set c = c.t -%}{%- endif -%}"
    )
    user_fmt = template.user.split("{content}")
    prefix = template.prefix.split("{system}")
    parts = [
        "{%- set sys = namespace(v='" + e(template.system) + "') -%}",
        "{%- for m in messages -%}{%- if m['role'] == 'system' -%}{%- set sys.v = m['content'] -%}{%- endif -%}{%- endfor -%}",
    ]
    if template.add_bos:
        parts.append("{{- bos_token -}}")
    if len(prefix) == 2:
        parts.append("{{- '" + e(prefix[0]) + "' + sys.v + '" + e(prefix[1]) + "' -}}")
    else:
        parts.append("{{- '" + e(template.prefix) + "' -}}")
    parts.append("{%- for m in messages -%}" + content)
    if template.user_only_placeholders:
        user_expr = "'<image>' * (c.count('<image>'))"
    else:
        user_expr = "c"
    parts.append(
        "{%- if m['role'] == 'user' -%}{{- '" + e(user_fmt[0]) + "' + " + user_expr + " + '" + e(user_fmt[1]) + "' -}}"
        "{%- elif m['role'] == 'assistant' -%}{{- '" + e(template.assistant_start) + "' + '" + e(template.answer_prefix) + "' + c + '"
        + e(template.assistant_end) + e(template.after_assistant) + "' -}}{%- endif -%}{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- '" + e(template.assistant_start) + "' -}}{%- endif -%}"
    )
    return "".join(parts)
