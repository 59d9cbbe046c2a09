"""Shared fixtures: a tiny offline causal LM, a temporary MLflow store, a shrunken config.

Nothing here touches the network. The tiny model is a randomly initialised 2-layer Llama
with a real byte-level BPE tokenizer (trained here on GeneralPoints-like text) and a
ChatML chat template of the same shape as SmolLM2's, so chat-templated prompts,
completion-only loss and generation stop tokens behave as with the real model.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_FILE = ROOT / "config" / "config.yaml"

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

# Same shape as SmolLM2-Instruct's template, without its default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CARDS = ["A", "2", "3", "4", "5", "6", "7", "8", "9", "10", "J", "Q", "K"]
_REASONS = [
    "the formula does not evaluate to 24",
    "you used a number that is not in the hand",
    "you did not use every card",
    "the formula is not legal",
    "you used a card more than once",
]


def _value(card: str) -> int:
    return {"A": 1, "J": 10, "Q": 10, "K": 10}.get(card, None) or int(card)


def gp_like_prompt(cards: list[str]) -> str:
    return (
        "You are an expert 24 points card game player. You are observing these four cards: "
        + ", ".join(cards)
        + ". Note that 'J', 'Q', and 'K' count as '10', and each card must be used once. "
        "Your goal is to output a formula that evaluates to 24 using numbers from the cards "
        "and operators such as '+', '-', '*', '/', '(', ')', and '='. Your output should be "
        'in the following json format: {"cards": [x, y, z, w], "number": [a, b, c, d], "formula": "..."}'
    )


def gp_like_answer(cards: list[str], rng: random.Random) -> str:
    nums = [_value(c) for c in cards]
    ops = [rng.choice("+-*/") for _ in range(3)]
    formula = f"({nums[0]}{ops[0]}{nums[1]}){ops[1]}{nums[2]}{ops[2]}{nums[3]}=24"
    return json.dumps({"cards": cards, "number": nums, "formula": formula})


def hand_made_sft_rows(n: int = 32, seed: int = 0) -> list[dict]:
    """Rows in the shape of the task's sft.jsonl (prompt chat list + completion message + metadata)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cards = [rng.choice(_CARDS) for _ in range(4)]
        rows.append(
            {
                "id": f"hand-{i}",
                "prompt": [{"role": "user", "content": gp_like_prompt(cards)}],
                "completion": [{"role": "assistant", "content": gp_like_answer(cards, rng)}],
                "cards": cards,
                "rule": "id",
            }
        )
    return rows


def sft_rows(config: dict, n: int | None = None) -> list[dict]:
    """SFT rows of GP-L from the task module when it exists, else hand-made rows of the same shape."""
    try:
        from sftvsrl.tasks import get_task

        rows = get_task("gp_l").generate_splits(config["gp"], config.get("data_seed", 0))["sft"]
    except (ImportError, ModuleNotFoundError, AttributeError, NotImplementedError):
        rows = hand_made_sft_rows(n or 32)
    return rows[:n] if n else rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _task_texts() -> list[str]:
    """Prompts and answers of the real GP-L task (all splits) when its module exists, so the tiny
    tokenizer compresses them about as well as a real one (GP prompts stay well under 256 tokens)."""
    try:
        import yaml

        from sftvsrl.tasks import get_task

        gp_cfg = yaml.safe_load(CONFIG_FILE.read_text())["gp"]
        splits = get_task("gp_l").generate_splits(gp_cfg, 0)
    except Exception:  # noqa: BLE001 - the task module is optional here
        return []
    out = []
    for rows in splits.values():
        for row in rows[:200]:
            for msg in list(row.get("prompt") or []) + list(row.get("completion") or []):
                if isinstance(msg, dict) and isinstance(msg.get("content"), str):
                    out.append(msg["content"])
    return out


def _corpus(n: int = 300, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = _task_texts()
    for _ in range(n):
        cards = [rng.choice(_CARDS) for _ in range(4)]
        out.append(gp_like_prompt(cards))
        out.append(gp_like_answer(cards, rng))
        out.append(f"You failed this trial because {rng.choice(_REASONS)}.")
        out.append("user\nassistant\nsystem\n")
    return out


def build_tiny_model(out_dir: Path, vocab_size: int = 512, seed: int = 0) -> Path:
    """Write a tiny random Llama + trained byte-level BPE tokenizer with ChatML to `out_dir`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    tok.train_from_iterator(_corpus(), trainer=trainer)

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
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny random causal LM folder (model + ChatML tokenizer), built offline once per session.

    Treat it as read-only: tests that train write elsewhere.
    """
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def _mlflow_template_db(tmp_path_factory) -> Path:
    """An empty, fully migrated MLflow SQLite db (creating one takes seconds: do it once)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture
def mlflow_uri(tmp_path, _mlflow_template_db) -> str:
    """A fresh SQLite MLflow store for one test (a copy of an empty migrated db)."""
    import shutil

    db = tmp_path / "mlruns" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(_mlflow_template_db, db)
    return f"sqlite:///{db}"


@pytest.fixture
def tiny_config(tmp_path, mlflow_uri, monkeypatch) -> dict:
    """config/config.yaml, validated, shrunk to a few steps, logging to the temporary MLflow store."""
    from sftvsrl.config import load_config

    (tmp_path / "mlruns").mkdir(exist_ok=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = load_config(CONFIG_FILE)
    config["study"] = "pytest"
    config["sft"].update(
        init_steps=4, steps=4, checkpoint_steps=[2, 4], save_every=2, batch_size=2, max_length=256
    )
    config["rl"].update(
        steps=2, checkpoint_steps=[1, 2], save_every=1, prompts_per_step=2, num_generations=2, max_new_tokens=16
    )
    config["eval"].update(episodes=4, max_new_tokens=16)
    config["mlflow"]["tracking_uri"] = mlflow_uri
    return config
