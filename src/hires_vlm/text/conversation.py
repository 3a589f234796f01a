"""Conversations → token ids and labels, one ``<image>`` placeholder token per image.

Pieces are tokenised one by one and concatenated, so labels come from the structure (which piece
is the assistant's) rather than from re-tokenising and searching — the cause of LLaVA's
"tokenization mismatch" warnings that silently zero the loss. Each image stays a single
placeholder token here; the model expands it to the method's visual tokens (their number can
depend on the text, so it is only known there). Truncation is done with each image counted at its
*upper bound* of visual tokens, drops whole trailing turns first, never cuts inside an image, and
reports what it dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from .templates import IMAGE_PLACEHOLDER, Template

IGNORE_INDEX = -100

_ROLE_ALIASES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class ConversationError(ValueError):
    """A conversation that cannot be encoded; the message says why and what to change."""


class PlaceholderMismatchError(ConversationError):
    pass


class SequenceTooLongError(ConversationError):
    pass


@dataclass
class EncodedConversation:
    input_ids: list[int]
    labels: list[int]
    num_images: int  # images kept (a prefix of the sample's images)
    length: int  # length once every image is expanded to its upper bound of visual tokens
    dropped_turns: int = 0
    truncated_tokens: int = 0


def parse_turns(conversations: list[dict]) -> tuple[str | None, list[tuple[str, str | None]]]:
    """LLaVA's ``[{"from": "human"|"gpt"|"system", "value": …}]`` → (system, [(user, answer), …]).

    A trailing user turn without an answer gets ``answer=None`` (a generation prompt).
    """
    if not isinstance(conversations, list) or not conversations:
        raise ConversationError("'conversations' must be a non-empty list of {'from', 'value'} turns")
    system = None
    turns: list[tuple[str, str | None]] = []
    pending: str | None = None
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise ConversationError(f"turn {i} is not an object with 'from' and 'value'")
        role = _ROLE_ALIASES.get(str(turn.get("from", turn.get("role", ""))).lower())
        value = turn.get("value", turn.get("content"))
        if role is None or not isinstance(value, str):
            raise ConversationError(
                f"turn {i} needs 'from' in human/gpt/system and a string 'value', got {sorted(map(str, turn))}"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate ("\ud800") from a JSON escape
            raise ConversationError(f"turn {i} holds text that is not valid Unicode ({err.reason} at "
                                    f"character {err.start})") from None
        if role == "system":
            if i != 0:
                raise ConversationError(f"a system turn may only come first (found at turn {i})")
            if IMAGE_PLACEHOLDER in value:
                raise PlaceholderMismatchError(f"turn {i}: a system turn contains {IMAGE_PLACEHOLDER!r}; images go "
                                               "in user turns")
            system = value
        elif role == "user":
            if pending is not None:
                raise ConversationError(f"two user turns in a row at turn {i}; turns must alternate human/gpt")
            pending = value
        else:
            if pending is None:
                raise ConversationError(f"turn {i} is an assistant turn without a user turn before it")
            if IMAGE_PLACEHOLDER in value:
                raise PlaceholderMismatchError(f"turn {i}: an assistant answer contains {IMAGE_PLACEHOLDER!r}")
            turns.append((pending, value))
            pending = None
    if pending is not None:
        turns.append((pending, None))
    if not turns:
        raise ConversationError("the conversation has no user turn")
    return system, turns


def count_placeholders(conversations: list[dict]) -> int:
    return sum(str(t.get("value", "")).count(IMAGE_PLACEHOLDER) for t in conversations if isinstance(t, dict))


class ConversationEncoder:
    """Encodes conversations for one tokenizer and template."""

    def __init__(self, tokenizer, template: Template, image_token_id: int, max_length: int | None = None):
        self.tokenizer = tokenizer
        self.template = template
        self.image_token_id = int(image_token_id)
        self.max_length = max_length
        self._cache: dict[str, list[int]] = {}

    def _ids(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _const(self, text: str) -> list[int]:
        if text not in self._cache:
            self._cache[text] = self._ids(text)
        return self._cache[text]

    def _with_images(self, text: str) -> list[int]:
        parts = text.split(IMAGE_PLACEHOLDER)
        out: list[int] = []
        for k, part in enumerate(parts):
            if k:
                out.append(self.image_token_id)
            out += self._ids(part)
        return out

    def encode(
        self,
        conversations: list[dict],
        image_token_counts: list[int] | None = None,
        *,
        for_generation: bool = False,
        system: str | None = None,
    ) -> EncodedConversation:
        """Encode a LLaVA conversation.

        ``image_token_counts``: upper bound of visual tokens for each image of the sample, in order;
        its length must equal the number of ``<image>`` placeholders. ``for_generation``: the last
        turn must be a user turn and the result ends with the assistant prompt.
        """
        conv_system, turns = parse_turns(conversations)
        counts = list(image_token_counts or [])
        n_placeholders = sum(u.count(IMAGE_PLACEHOLDER) for u, _ in turns)
        if n_placeholders != len(counts):
            raise PlaceholderMismatchError(
                f"the conversation has {n_placeholders} {IMAGE_PLACEHOLDER!r} placeholder(s) but {len(counts)} "
                f"image(s) were given; put exactly one {IMAGE_PLACEHOLDER!r} in the human turns per image"
            )
        if for_generation and turns[-1][1] is not None:
            raise ConversationError("for generation the conversation must end with a user turn")
        if not for_generation and turns[-1][1] is None:
            raise ConversationError("the conversation ends with a user turn that has no answer to learn")
        t = self.template
        head: list[int] = []
        if t.add_bos and self.tokenizer.bos_token_id is not None:
            head.append(self.tokenizer.bos_token_id)
        head += self._ids(t.prefix_text(system if system is not None else conv_system))

        # Encode every turn as (ids, labels, images-in-turn).
        pieces: list[tuple[list[int], list[int], int]] = []
        for user, answer in turns:
            user_text = t.user.format(content=t.user_content(user))
            user_ids = self._with_images(user_text) + self._const(t.assistant_start)
            ids, labels = list(user_ids), [IGNORE_INDEX] * len(user_ids)
            if answer is not None:
                target = self._ids(t.answer_prefix + answer) + self._const(t.assistant_end)
                tail = self._const(t.after_assistant)
                ids += target + tail
                labels += target + [IGNORE_INDEX] * len(tail)
            pieces.append((ids, labels, user.count(IMAGE_PLACEHOLDER)))

        def expanded_length(n_pieces: int) -> int:
            length, img = len(head), 0
            for ids, _, n_img in pieces[:n_pieces]:
                length += len(ids) - n_img + sum(counts[img:img + n_img])
                img += n_img
            return length

        keep = len(pieces)
        limit = self.max_length
        if limit is not None and not for_generation:
            while keep > 1 and expanded_length(keep) > limit:
                keep -= 1
        length = expanded_length(keep)
        truncated = 0
        ids = list(head)
        labels = [IGNORE_INDEX] * len(head)
        for p_ids, p_labels, _ in pieces[:keep]:
            ids += p_ids
            labels += p_labels
        n_images = sum(n for _, _, n in pieces[:keep])
        if limit is not None and length > limit:
            over = length - limit
            # Only text after the last image may be cut, and only in training (never a prompt).
            last_img = max((i for i, x in enumerate(ids) if x == self.image_token_id), default=-1)
            room = len(ids) - (last_img + 1)
            if for_generation or over > room or all(lab == IGNORE_INDEX for lab in labels[: len(ids) - over]):
                raise SequenceTooLongError(
                    f"the sample needs {length} tokens (images counted at {counts[:n_images]} visual tokens) but "
                    f"max_length is {limit}; raise max_length, shorten the text or use a method with fewer visual tokens"
                )
            ids, labels = ids[: len(ids) - over], labels[: len(labels) - over]
            truncated, length = over, limit
        if all(lab == IGNORE_INDEX for lab in labels) and not for_generation:
            raise ConversationError("the sample has no assistant token to learn from")
        return EncodedConversation(ids, labels, n_images, length, len(pieces) - keep, truncated)

    def encode_prompt(self, prompt: str, num_images: int, image_token_counts: list[int] | None = None,
                      system: str | None = None) -> list[int]:
        """Token ids of a one-turn generation prompt. Adds leading placeholders when the prompt has none."""
        if IMAGE_PLACEHOLDER not in prompt and num_images:
            prompt = (IMAGE_PLACEHOLDER + "\n") * num_images + prompt
        counts = image_token_counts if image_token_counts is not None else [0] * num_images
        enc = self.encode([{"from": "human", "value": prompt}], counts, for_generation=True, system=system)
        return enc.input_ids
