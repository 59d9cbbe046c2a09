"""What a model needs beside the token ids, and what it can do: its image inputs for a batch, its image
placeholder token, and whether its KV cache may be carried from one round to the next.

Details: docs/code-notes.md#workflowsftvsrlmodel_inputspy
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def image_token_id(model) -> int | None:
    """The id of the model's image placeholder token (None for a text model)."""
    config = getattr(model, "config", None)
    for key in ("image_token_id", "image_token_index"):
        value = getattr(config, key, None)
        if value is not None:
            return int(value)
    return None


def multimodal_positions(model) -> bool:
    """True for models whose rotary positions depend on the images (Qwen2-VL's M-RoPE): their
    positions cannot be derived from the attention mask."""
    inner = getattr(model, "model", None)
    return hasattr(model, "get_rope_index") or hasattr(inner, "get_rope_index")


def cross_attention_images(model) -> bool:
    """True for models whose text cross-attends to the images (Llama-3.2-Vision / mllama): each image
    is one placeholder token, and the model reads the pixels beside the text with a per-token
    `cross_attention_mask` [batch, tokens, images, tiles] (which images each token sees)."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return bool(getattr(text_config, "cross_attention_layers", None))


def reuses_cache(model, images: bool = True) -> bool:
    """Whether `CachedGenerator` may carry the model's KV cache from one round to the next (`images`:
    whether the episodes show images).

    The carried cache holds one key/value per token of the conversation in every layer, and the next
    round's positions are counted from the attention mask. That holds for plain 1-D positions (Llama,
    LLaVA, Idefics3/SmolVLM). It does not for:
    - multimodal rotary positions (Qwen2-VL's M-RoPE) once there are images: a token's position after an
      image depends on the image's grid, not on the mask;
    - cross-attention to the images (mllama): its cross-attention layers cache the vision states of the
      call's images (images x tiles x patches long, not the text's length, and only the images fed in that
      call), so a carried cache would be misread, and a round that feeds only its new tokens would lose
      the earlier images.
    Those models re-read the whole conversation, with all its images, every round.
    """
    if cross_attention_images(model):
        return False
    return not (images and multimodal_positions(model))


def image_inputs(tokenizer, model, input_ids, images_per_row: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The model's image inputs for a batch (`input_ids`: the batch as fed, left-padded), in the
    model's own layout, batched by the processor.

    Models that merge image features into the image tokens (LLaVA, Idefics3, Qwen2-VL) read the
    images of all rows as one sequence: rows without images are skipped (their image tokens are in
    the cache or absent); Idefics3 pads a row's images to the batch's most, with all-zero images that
    the model drops. Per-token image markers (`mm_token_type_ids`) are derived from `input_ids`.
    Cross-attention models (mllama) read pixels per row: every row must bring the images of all its
    `<|image|>` tokens, and the `cross_attention_mask` is computed for `input_ids` as the processor
    computes it for its own tokens."""
    if cross_attention_images(model):
        return _cross_attention_image_inputs(tokenizer, model, input_ids, images_per_row)
    rows = [list(images) for images in images_per_row if images]
    if not rows:
        return {}
    chats = [[{"role": "user", "content": [{"type": "image", "image": im} for im in images]}] for images in rows]
    batch = tokenizer.apply_chat_template(
        chats, tokenize=True, return_dict=True, return_tensors="pt", processor_kwargs={"padding": True}
    )
    per_token = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
    out = {k: v for k, v in batch.items() if k not in per_token}
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in batch:  # per-token markers for the ids as fed, not the processor's own tokens
            out[key] = (input_ids == image_token_id(model)).long()
    return out


def _cross_attention_image_inputs(processor, model, input_ids, images_per_row) -> dict[str, Any]:
    """mllama's image inputs: pixels [batch, images, tiles, 3, H, W], `aspect_ratio_ids`,
    `aspect_ratio_mask` from the image processor, and the `cross_attention_mask` of `input_ids`
    from transformers' own mllama helpers (each `<|image|>` token's image is seen by the tokens from
    it to the next image token, or to the end)."""
    from transformers.models.mllama.processing_mllama import (
        convert_sparse_cross_attention_mask_to_dense,
        get_cross_attention_token_mask,
    )

    rows = [list(images) for images in images_per_row]
    if not any(rows):
        return {}
    if not all(rows):
        raise ValueError(
            "a cross-attention model (mllama) reads the images of every row of a batch: "
            "a batch mixing rows with and without images cannot be fed"
        )
    image_id = image_token_id(model)
    spans = [get_cross_attention_token_mask(row, image_id) for row in input_ids.tolist()]
    for i, (row_spans, images) in enumerate(zip(spans, rows)):
        if len(row_spans) != len(images):
            raise ValueError(f"row {i} holds {len(row_spans)} image tokens for {len(images)} images")
    pixels = dict(processor.image_processor(images=rows, return_tensors="pt"))
    num_tiles = pixels.pop("num_tiles")
    mask = convert_sparse_cross_attention_mask_to_dense(
        spans, num_tiles=num_tiles, max_num_tiles=processor.image_processor.max_image_tiles, length=input_ids.shape[1]
    )
    return {**pixels, "cross_attention_mask": torch.from_numpy(mask)}
