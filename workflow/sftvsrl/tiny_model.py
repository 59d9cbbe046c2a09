"""A tiny random causal LM, built offline: the base model of the test configs (`model.base: tiny-random`).

A randomly initialised 2-layer Llama with a real byte-level BPE tokenizer, trained here on
GeneralPoints text, and a ChatML chat template of the same shape as SmolLM2's, so chat-templated
prompts, completion-only loss and generation stop tokens behave as with the real model. It
learns nothing worth measuring; it exists so that the whole workflow runs in minutes on a CPU
with no network. Deterministic in `seed` and the corpus.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# Same shape as SmolLM2-Instruct's template, without its default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# The GeneralPoints setting whose prompts and answers train the tokenizer (the CPU default's:
# 3 cards, short prompt), so GP prompts stay well under 256 tokens.
CORPUS_GP = {
    "target": 24,
    "num_cards": 3,
    "eval_overlaps_train": True,
    "prompt": "short",
    "eval_pool_fraction": 0.2,
    "sizes": {"sft": 2048, "rl": 256, "eval_id": 200, "eval_ood_rule": 200},
}
CORPUS_ROWS_PER_SPLIT = 200

CARDS = ["A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K"]
FEEDBACK_REASONS = [
    "the formula does not evaluate to 24",
    "you used a number that is not in the hand",
    "you did not use every card",
    "the formula is not legal",
    "you used a card more than once",
]


def card_value(card: str) -> int:
    return {"A": 1, "J": 10, "Q": 10, "K": 10}.get(card) or int(card)


def gp_like_prompt(cards: list[str]) -> str:
    """A 4-card prompt in the paper's wording (the task's `prompt: paper` style, paraphrased)."""
    return (
        "You are an expert 24 points card game player. You are observing these four cards: "
        + ", ".join(cards)
        + ". Note that 'J', 'Q', and 'K' count as '10', and each card must be used once. "
        "Your goal is to output a formula that evaluates to 24 using numbers from the cards "
        "and operators such as '+', '-', '*', '/', '(', ')', and '='. Your output should be "
        'in the following json format: {"cards": [x, y, z, w], "number": [a, b, c, d], "formula": "..."}'
    )


def gp_like_answer(cards: list[str], rng: random.Random) -> str:
    """An answer in the expected JSON format (its formula is random, rarely right)."""
    nums = [card_value(c) for c in cards]
    ops = [rng.choice("+-*/") for _ in range(3)]
    formula = f"({nums[0]}{ops[0]}{nums[1]}){ops[1]}{nums[2]}{ops[2]}{nums[3]}=24"
    return json.dumps({"cards": cards, "number": nums, "formula": formula})


def task_texts(gp_config: dict[str, Any] | None = None) -> list[str]:
    """Prompts and answers of the real GP-L task (the first rows of every split)."""
    from .tasks import get_task

    splits = get_task("gp_l").generate_splits(gp_config or CORPUS_GP, 0)
    out = []
    for rows in splits.values():
        for row in rows[:CORPUS_ROWS_PER_SPLIT]:
            for msg in list(row.get("prompt") or []) + list(row.get("completion") or []):
                if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                    out.append(msg["content"])
    return out


def corpus(n: int = 300, seed: int = 0, gp_config: dict[str, Any] | None = None) -> list[str]:
    """The tokenizer's training text: the task's texts plus `n` paper-style prompts, answers and feedback turns."""
    rng = random.Random(seed)
    out = task_texts(gp_config)
    for _ in range(n):
        cards = [rng.choice(CARDS) for _ in range(4)]
        out.append(gp_like_prompt(cards))
        out.append(gp_like_answer(cards, rng))
        out.append(f"You failed this trial because {rng.choice(FEEDBACK_REASONS)}.")
        out.append("user\nassistant\nsystem\n")
    return out


def make_tokenizer(texts: list[str], vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on `texts`, with ChatML special tokens and template, padding left."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=IM_START,
        eos_token=IM_END,
        pad_token=PAD,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def make_tiny_model(vocab_size: int = 512, seed: int = 0, texts: list[str] | None = None):
    """(model, tokenizer): a random 2-layer Llama (hidden size 64) and its tokenizer, in memory."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = make_tokenizer(corpus() if texts is None else texts, vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=128,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model, tokenizer


def build_tiny_model(
    out_dir: str | Path, vocab_size: int = 512, seed: int = 0, texts: list[str] | None = None
) -> Path:
    """Write the tiny random Llama and its tokenizer to `out_dir` (a plain Hugging Face folder)."""
    model, tokenizer = make_tiny_model(vocab_size, seed, texts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
