"""The conversation as token ids: a prompt's ids, and the context ids a chat template adds between two
attempts (the feedback turn), spliced after the model's sampled answer.

Before editing: the rollout trains on the ids it sampled, so the splice must leave the sampled ids as
they are and make prompt + completion the tokenization of the rendered conversation (the conversation
only grows: each render is a prefix of the next). `tokenizer` may be a processor (images expanded).

Details: docs/code-notes.md#workflowsftvsrlturnspy
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .tasks.base import with_images


def text_tokenizer(processing_class):
    """The tokenizer of a processing class: a processor's own, or the tokenizer itself."""
    return getattr(processing_class, "tokenizer", processing_class)


def _render(tokenizer, messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)


def _encode(tokenizer, text: str, images: Sequence[Any] = ()) -> list[int]:
    """Token ids of `text`; with images, the processor's, with every image placeholder expanded."""
    if images:
        ids = list(tokenizer(text=[text], images=[list(images)], add_special_tokens=False)["input_ids"][0])
        # mllama's processor writes a bos in front of any text without one (add_special_tokens aside):
        # a text with no bos of its own, such as a context turn, gets it removed again
        tok = text_tokenizer(tokenizer)
        if tok.bos_token and tok.bos_token not in text and tok.bos_token_id in ids:
            ids.remove(tok.bos_token_id)
        return ids
    return list(text_tokenizer(tokenizer)(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer, messages: Sequence[dict[str, Any]], images: Sequence[Any] = ()) -> list[int]:
    """The prompt's ids with the generation prompt: the processor's own rendering when there are images."""
    if not images:
        return _encode(tokenizer, _render(tokenizer, messages, add_generation_prompt=True))
    rendered = tokenizer.apply_chat_template(
        with_images(messages, images), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    return rendered["input_ids"][0].tolist()


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends an answer: the tokenizer's eos and the model's generation-config eos."""
    ids: list[int] = []
    candidates: list[Any] = [text_tokenizer(tokenizer).eos_token_id]
    gen_cfg = getattr(model, "generation_config", None)
    if gen_cfg is not None:
        candidates.append(gen_cfg.eos_token_id)
    for c in candidates:
        for i in c if isinstance(c, (list, tuple)) else [c]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer has no eos token: answers could never end")
    return ids


def cut_at_eos(ids: Sequence[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    """The sampled ids up to and including the first eos (padding after it dropped)."""
    out = []
    for t in ids:
        out.append(int(t))
        if int(t) in eos_ids:
            return out, True
    return out, False


_SENTINEL = "SFTVSRLxSENTINELx7f3a"


def context_ids_after_attempt(
    tokenizer,
    before: Sequence[dict[str, Any]],
    after: Sequence[dict[str, Any]],
    ended_with_eos: bool,
    eos_id: int | None,
    images: Sequence[Any] = (),
) -> list[int]:
    """Token ids the chat template adds after the model's sampled answer (see the module doc).

    `before`: the conversation the answer was generated for (ends with a user turn);
    `after`: it plus the assistant turn and the new user turn(s) appended by `episode.step`;
    `images`: the images of the image parts those new turns brought (expanded by the processor).
    """
    n = len(before)
    if list(after[:n]) != list(before) or len(after) < n + 2 or after[n].get("role") != "assistant":
        raise ValueError(
            "episode.step must append the assistant answer and then the next user turn to episode.messages, "
            "leaving earlier turns unchanged (the token-level splice depends on it)"
        )
    prev = _render(tokenizer, before, add_generation_prompt=True)
    closed = _render(tokenizer, after[: n + 1], add_generation_prompt=False)
    full = _render(tokenizer, after, add_generation_prompt=True)
    if not closed.startswith(prev) or not full.startswith(closed):
        raise ValueError(
            "the chat template does not render the conversation as a growing prefix; cannot splice "
            f"feedback turns at the token level (prefix of {prev[-80:]!r} vs {closed[len(prev) - 80 : len(prev) + 80]!r})"
        )
    # END: what the template writes after an assistant turn's content, read off a turn whose
    # content is a sentinel no template rewrites (the real content may be trimmed, empty, ...)
    probe = _render(tokenizer, [*before, {"role": "assistant", "content": _SENTINEL}], add_generation_prompt=False)
    end = probe[probe.rfind(_SENTINEL) + len(_SENTINEL) :] if _SENTINEL in probe else ""
    if not end or not closed.endswith(end):
        raise ValueError(f"cannot find the end of an assistant turn in the chat template (got {end!r})")
    turn = full[len(closed) :]
    text_tok = text_tokenizer(tokenizer)
    eos_text = text_tok.decode([eos_id]) if eos_id is not None else None
    if ended_with_eos and eos_text and end.startswith(eos_text):
        end = end[len(eos_text) :]
    text = end + turn
    if not text:
        return []
    anchor_id = eos_id if eos_id is not None else text_tok.eos_token_id
    anchor = text_tok.decode([anchor_id])
    ids = _encode(tokenizer, anchor + text, images)
    if ids and ids[0] == anchor_id:
        return ids[1:]
    return _encode(tokenizer, text, images)  # the anchor did not tokenize to itself: plain encoding
