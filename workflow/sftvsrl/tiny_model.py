"""A tiny random causal LM, built offline: the base model of the test configs (`model.base: tiny-random`).

A randomly initialised 2-layer Llama with a real byte-level BPE tokenizer, trained here on
GeneralPoints text, and a ChatML chat template of the same shape as SmolLM2's, so chat-templated
prompts, completion-only loss and generation stop tokens behave as with the real model. It
learns nothing worth measuring; it exists so that the whole workflow runs in minutes on a CPU
with no network. Deterministic in `seed` and the corpus.

Two tiny random vision-language models beside it, with processors built in code:
- `make_tiny_vlm` (`model.base: tiny-random-vl`): a LLaVA, a 2-layer CLIP vision tower on 32x32
  images (16 patches of 8x8, so 16 image tokens per image) projected into the same 2-layer Llama,
  and a `LlavaProcessor` whose image processor squashes the whole picture to 32x32 (no centre
  crop: no card is cut off) and whose tokenizer is the text model's plus the special `<image>`.
- `make_tiny_qwen2_vl`: a Qwen2-VL (M-RoPE: 3-row position ids, image tokens laid out on the
  image's grid), for tests of that path only. Its processor needs torchvision (see there);
  `make_tiny_qwen2_vl_parts` gives the model, image processor and tokenizer without it.
- `make_tiny_idefics3` (SmolVLM's architecture: pixel-shuffled image tokens, pixels batched per row with
  a pixel mask) and `make_tiny_mllama` (Llama-3.2-Vision: one `<|image|>` token per image, cross-attention
  to image tiles), with their PIL image processors, for the rollout and RL tests of those families.

The GPU configs' families, for the rehearsal of the GPU path on a CPU (`config/test/gpu-rehearsal*.yaml`):
`make_tiny_qwen2` (`model.base: tiny-random-qwen2`, config/gpu.yaml's Qwen2.5), and the Idefics3 and
mllama above as `tiny-random-smolvlm` (config/gpu-vl.yaml's SmolVLM) and `tiny-random-mllama`
(config/paper.yaml's Llama-3.2-Vision). Their generation configs carry a hub instruct model's sampling
defaults (`HUB_LIKE_SAMPLING`), which rollouts and evaluation must not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
IMAGE_TOKEN = "<image>"  # LLaVA's image placeholder
VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"

# Same shape as SmolLM2-Instruct's template, without its default system message.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def multimodal_chat_template(image: str) -> str:
    """CHAT_TEMPLATE for chats whose message content is a string or a list of parts: an image part
    renders as `image` (the model's placeholder), a text part as its text. Any role."""
    return (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for part in message['content'] %}"
        "{% if part['type'] == 'image' %}{{ '" + image + "' }}"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ '<|im_end|>' + '\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )


VL_CHAT_TEMPLATE = multimodal_chat_template(IMAGE_TOKEN)
QWEN2_VL_CHAT_TEMPLATE = multimodal_chat_template(VISION_START + IMAGE_PAD + VISION_END)

# The tiny LLaVA's vision tower: square images of VLM_IMAGE_SIZE pixels cut into patches of
# VLM_PATCH_SIZE; CLIP adds a CLS position, which the "default" feature strategy drops again.
VLM_IMAGE_SIZE, VLM_PATCH_SIZE = 32, 8
VLM_IMAGE_TOKENS = (VLM_IMAGE_SIZE // VLM_PATCH_SIZE) ** 2
# The tiny Qwen2-VL's image processor: Qwen2-VL's 14-pixel patches merged 2x2 into one token, an
# image resized (aspect kept) to between 1 and 8 merged tokens' worth of pixels: a GP-VL hand of
# 4 cards (about 360x128) becomes 28x112 pixels, 2x8 patches, 4 image tokens.
QWEN2_VL_PATCH, QWEN2_VL_MERGE = 14, 2
QWEN2_VL_PIXELS = {
    "shortest_edge": (QWEN2_VL_PATCH * QWEN2_VL_MERGE) ** 2,
    "longest_edge": 8 * (QWEN2_VL_PATCH * QWEN2_VL_MERGE) ** 2,
}

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
# GP-VL rows whose text parts join the VL tokenizer's corpus (the prompt style is set per use).
CORPUS_GP_VL = {
    "target": 24,
    "num_cards": 4,
    "sizes": {"sft": 100, "rl": 20, "eval_id": 20, "eval_ood_rule": 20, "eval_ood_visual": 20},
}

# The paper's 4-card game in the paper's wording: its prompts, answers and feedback join the tokenizer's corpus too.
CORPUS_GP_PAPER = {**CORPUS_GP, "num_cards": 4, "prompt": "paper"}
CHAT_ROLES = "user\nassistant\nsystem\n"


def task_splits(gp_config: dict[str, Any] | None = None, task: str = "gp_l") -> dict[str, list[dict[str, Any]]]:
    """The rows of a real GP task in `gp_config` (default: the CPU default's), from its own data seed."""
    from .tasks import get_task

    return get_task(task).generate_splits(gp_config or CORPUS_GP, 0)


def task_texts(splits: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Prompts and answers of the first rows of every split.

    A message's content is a string or a list of parts (GP-VL's image prompts); the text parts count.
    """
    out = []
    for rows in splits.values():
        for row in rows[:CORPUS_ROWS_PER_SPLIT]:
            for msg in list(row.get("prompt") or []) + list(row.get("completion") or []):
                content = msg.get("content") if isinstance(msg, dict) else None
                if isinstance(content, str):
                    out.append(content)
                elif isinstance(content, list):
                    out.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return out


def feedback_texts(splits: dict[str, list[dict[str, Any]]], n: int) -> list[str]:
    """The verifier's messages to wrong answers: each of the first `n` RL hands of GP-L `splits` answered with the
    expert answer of another hand, or with no formula, as the task's episodes score them."""
    from .tasks import get_task

    task = get_task("gp_l")
    hands, answers = splits["rl"][:n], [row["completion"][0]["content"] for row in splits["sft"][:n]]
    out = []
    for i, row in enumerate(hands):
        for answer in (answers[(i + 1) % len(answers)], "no formula"):
            out.append(task.make_episode(row, viter=2).step(answer).feedback)  # the last attempt gets none
    return [text for text in out if text]  # an answer right for this hand too gets none


def corpus(n: int = 300, gp_config: dict[str, Any] | None = None) -> list[str]:
    """The tokenizer's training text, all of it the real task's: the prompts and answers of GP rows (the CPU
    default's setting, or `gp_config`, and the paper's 4-card game in its wording) and the verifier's feedback to
    `n` wrong answers of each."""
    settings = [task_splits(gp_config), task_splits(CORPUS_GP_PAPER)]
    texts = [t for splits in settings for t in task_texts(splits)]
    feedback = [t for splits in settings for t in feedback_texts(splits, n)]
    return texts + feedback + [CHAT_ROLES]


def vl_corpus(n: int = 300) -> list[str]:
    """`corpus` plus the text of GP-VL prompts in both prompt styles (the VL models' tokenizer)."""
    out = corpus(n)
    for style in ("short", "paper"):
        out.extend(task_texts(task_splits({**CORPUS_GP_VL, "prompt": style}, task="gp_vl")))
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
    from transformers import LlamaForCausalLM

    tokenizer = make_tokenizer(corpus() if texts is None else texts, vocab_size)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_tiny_llama_config(tokenizer))
    model.generation_config = _generation_config(tokenizer)
    return model, tokenizer


def _tiny_llama_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
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


def _generation_config(tokenizer):
    from transformers import GenerationConfig

    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# Qwen2.5-Instruct's generation_config.json (its sampling part): what a hub instruct model ships
HUB_LIKE_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}


def with_hub_sampling(model):
    """`model` with a hub instruct model's sampling defaults in its generation config."""
    model.generation_config.update(**HUB_LIKE_SAMPLING)
    return model


def make_tiny_qwen2(vocab_size: int = 512, seed: int = 0, texts: list[str] | None = None):
    """(model, tokenizer): a random 2-layer Qwen2 (config/gpu.yaml's Qwen2.5 family: grouped KV heads, biased
    q/k/v projections, tied embeddings), the tiny Llama's shape otherwise, with make_tokenizer's ChatML
    tokenizer, as Qwen's (`model.base: tiny-random-qwen2` adds hub-like sampling defaults)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = make_tokenizer(corpus() if texts is None else texts, vocab_size)
    llama = _tiny_llama_config(tokenizer).to_dict()
    same = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    same += ("max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")
    config = Qwen2Config(**{k: llama[k] for k in same}, num_key_value_heads=2)  # grouped KV heads, as Qwen2.5's
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = _generation_config(tokenizer)
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


# --------------------------------------------------------------------------- vision-language
def _vl_tokenizer(texts: list[str] | None, vocab_size: int, special: list[str], chat_template: str):
    """make_tokenizer on the VL corpus, plus the model's image tokens (special: never split, skipped
    when decoding) and a chat template that renders image parts."""
    tokenizer = make_tokenizer(vl_corpus() if texts is None else texts, vocab_size)
    tokenizer.add_special_tokens({"extra_special_tokens": special}, replace_extra_special_tokens=False)
    tokenizer.chat_template = chat_template
    return tokenizer


def make_tiny_vlm(seed: int = 0, texts: list[str] | None = None, vocab_size: int = 512):
    """(model, processor): a random tiny LLaVA and its `LlavaProcessor`, in memory (`model.base: tiny-random-vl`).

    Vision: CLIP, 2 layers, hidden size 32, VLM_IMAGE_SIZE-pixel square images, VLM_PATCH_SIZE-pixel
    patches; its last layer's patch features (CLS dropped) go through LLaVA's 2-layer projector
    into make_tiny_model's Llama. Every image becomes VLM_IMAGE_TOKENS `<image>` tokens.
    """
    import torch
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tokenizer = _vl_tokenizer(texts, vocab_size, [IMAGE_TOKEN], VL_CHAT_TEMPLATE)
    square = {"height": VLM_IMAGE_SIZE, "width": VLM_IMAGE_SIZE}
    # The whole picture squashed to the tower's square: a centre crop would cut off the outer cards.
    # The PIL backend: the same pixels with or without torchvision.
    image_processor = CLIPImageProcessorPil(size=square, crop_size=square, do_center_crop=False)
    # LlavaProcessor counts the tokens of an image as (height // patch_size) * (width // patch_size)
    # + num_additional_image_tokens, minus one under the "default" strategy: CLIP's CLS position
    # is added, then dropped, as the model does.
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VLM_PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=VL_CHAT_TEMPLATE,
    )
    torch.manual_seed(seed)
    vision = CLIPVisionConfig(
        image_size=VLM_IMAGE_SIZE,
        patch_size=VLM_PATCH_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=_tiny_llama_config(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=VLM_IMAGE_TOKENS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,  # the last layer: every vision weight gets a gradient
        tie_word_embeddings=True,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config = _generation_config(tokenizer)
    return model, processor


def make_tiny_qwen2_vl_parts(seed: int = 0, texts: list[str] | None = None, vocab_size: int = 512):
    """(model, image_processor, tokenizer): a random tiny Qwen2-VL and what its processor is made of.

    Text: 2 layers, hidden size 64, 4 heads of 16 dims whose 8 rotary frequencies M-RoPE splits
    2/3/3 over (time, height, width). Vision: 2 layers, 32 dims, 14-pixel patches merged 2x2.
    Needs no torchvision (the image processor is the PIL one); `make_tiny_qwen2_vl` adds the processor.
    The model's M-RoPE reads `mm_token_type_ids` (1 on image tokens) beside `image_grid_thw`.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    tokenizer = _vl_tokenizer(
        texts, vocab_size, [VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD], QWEN2_VL_CHAT_TEMPLATE
    )
    image_processor = Qwen2VLImageProcessorPil(
        size=dict(QWEN2_VL_PIXELS), patch_size=QWEN2_VL_PATCH, temporal_patch_size=2, merge_size=QWEN2_VL_MERGE
    )
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in (VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)}
    torch.manual_seed(seed)
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 2048,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": True,
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 64,  # the merger's output: the text model's hidden size
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": QWEN2_VL_PATCH,
            "spatial_merge_size": QWEN2_VL_MERGE,
            "temporal_patch_size": 2,
        },
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=True,
    )
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config = _generation_config(tokenizer)
    return model, image_processor, tokenizer


def make_tiny_qwen2_vl(seed: int = 0, texts: list[str] | None = None, vocab_size: int = 512):
    """(model, processor): `make_tiny_qwen2_vl_parts` with a `Qwen2VLProcessor`. For tests of the M-RoPE path.

    transformers 5.x's Qwen2VLProcessor cannot be built without torchvision: it requires a video
    processor, and every video processor is a torchvision one (so real Qwen2-VL / Qwen2.5-VL
    checkpoints need it too). Without torchvision this raises ImportError.
    """
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        raise ImportError(
            "the Qwen2-VL processor needs torchvision (transformers' Qwen2VLProcessor requires a video "
            "processor, and those are torchvision-backed); install a torchvision matching torch"
        )
    from transformers import Qwen2VLProcessor, Qwen2VLVideoProcessor

    model, image_processor, tokenizer = make_tiny_qwen2_vl_parts(seed, texts, vocab_size)
    video_processor = Qwen2VLVideoProcessor(
        size=dict(QWEN2_VL_PIXELS), patch_size=QWEN2_VL_PATCH, temporal_patch_size=2, merge_size=QWEN2_VL_MERGE
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    return model, processor


# The tiny Idefics3 (SmolVLM's architecture): SigLIP-style patches of 8 pixels on 32x32 images, 16 patches
# pixel-shuffled 2x2 (scale_factor 2) into 4 `<image>` tokens, which the processor wraps as
# `<fake_token_around_image><global-img><image>*4<fake_token_around_image>` (7 tokens per image; no splitting).
IDEFICS3_IMAGE_SIZE, IDEFICS3_PATCH_SIZE, IDEFICS3_SCALE = 32, 8, 2
IDEFICS3_IMAGE_SEQ_LEN = (IDEFICS3_IMAGE_SIZE // IDEFICS3_PATCH_SIZE) ** 2 // IDEFICS3_SCALE**2
IDEFICS3_FAKE, IDEFICS3_GLOBAL, IDEFICS3_EOU = "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"
IDEFICS3_SPECIAL = [IDEFICS3_FAKE, IMAGE_TOKEN, IDEFICS3_EOU, IDEFICS3_GLOBAL] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
]  # the tile tags of split images, as in SmolVLM's vocabulary

# The tiny Llama-3.2-Vision (mllama): Llama 3's chat markup (the template writes the bos token, a context
# turn does not; `<|eot_id|>` ends a turn), one `<|image|>` token per image that the text cross-attends
# from, and 32x32 tiles of 8-pixel patches (16 + a class token = 17 vision states per tile), at most 2 tiles
# per image (aspect ratios 1x1, 1x2, 2x1): a GP-VL hand (wider than tall) becomes 2 tiles.
MLLAMA_BOS, MLLAMA_EOT, MLLAMA_IMAGE = "<|begin_of_text|>", "<|eot_id|>", "<|image|>"
MLLAMA_HEADER = ("<|start_header_id|>", "<|end_header_id|>")
MLLAMA_TILE, MLLAMA_PATCH, MLLAMA_MAX_TILES = 32, 8, 2
MLLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|image|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def make_tiny_idefics3(seed: int = 0, texts: list[str] | None = None, vocab_size: int = 512):
    """(model, processor): a random tiny Idefics3 (SmolVLM's architecture) and its `Idefics3Processor`, in memory.

    Vision: 2 layers, hidden size 32, IDEFICS3_IMAGE_SIZE-pixel images in IDEFICS3_PATCH_SIZE-pixel
    patches, pixel-shuffled by IDEFICS3_SCALE and projected into make_tiny_model's Llama. The PIL image
    processor squashes every image to one IDEFICS3_IMAGE_SIZE square (no splitting into tiles), so an image
    is IDEFICS3_IMAGE_SEQ_LEN `<image>` tokens between two `<fake_token_around_image>`, after `<global-img>`.
    Pixels come batched [batch, images, 3, H, W] with a `pixel_attention_mask`. Chat template: ChatML with
    an image part rendered as `<image>`, which the processor expands.
    """
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    template = multimodal_chat_template(IMAGE_TOKEN)
    tokenizer = _vl_tokenizer(texts, vocab_size, IDEFICS3_SPECIAL, template)
    longest = {"longest_edge": IDEFICS3_IMAGE_SIZE}
    image_processor = Idefics3ImageProcessorPil(do_image_splitting=False, size=longest, max_image_size=longest)
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IDEFICS3_IMAGE_SEQ_LEN,
        chat_template=template,
    )
    torch.manual_seed(seed)
    config = Idefics3Config(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IDEFICS3_IMAGE_SIZE,
            "patch_size": IDEFICS3_PATCH_SIZE,
        },
        # untied: a random tied head repeats the last token whatever the images are, and the tests need
        # answers that depend on them
        text_config={**_tiny_llama_config(tokenizer).to_dict(), "tie_word_embeddings": False},
        scale_factor=IDEFICS3_SCALE,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        tie_word_embeddings=False,
    )
    model = Idefics3ForConditionalGeneration(config)
    model.generation_config = _generation_config(tokenizer)
    return model, processor


def _mllama_tokenizer(texts: list[str] | None, vocab_size: int):
    """make_tokenizer on the VL corpus with Llama 3's markup and `<|image|>` last (see make_tiny_mllama)."""
    tokenizer = make_tokenizer(vl_corpus() if texts is None else texts, vocab_size)
    tokenizer.add_special_tokens(
        {
            "bos_token": MLLAMA_BOS,
            "eos_token": MLLAMA_EOT,
            "extra_special_tokens": [*MLLAMA_HEADER, MLLAMA_IMAGE],
        },
        replace_extra_special_tokens=False,
    )
    tokenizer.chat_template = MLLAMA_CHAT_TEMPLATE
    if tokenizer.convert_tokens_to_ids(MLLAMA_IMAGE) != len(tokenizer) - 1:
        raise RuntimeError("<|image|> must be the tokenizer's last token (the text model's vocab_size)")
    return tokenizer


def _mllama_config(tokenizer):
    """The tiny Llama-3.2-Vision's config (see make_tiny_mllama); the text's vocabulary ends before `<|image|>`."""
    from transformers import MllamaConfig

    image_id = tokenizer.convert_tokens_to_ids(MLLAMA_IMAGE)
    return MllamaConfig(
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_global_layers": 1,
            "attention_heads": 2,
            "image_size": MLLAMA_TILE,
            "patch_size": MLLAMA_PATCH,
            "max_num_tiles": MLLAMA_MAX_TILES,
            "supported_aspect_ratios": [[1, 1], [1, 2], [2, 1]],
            "intermediate_layers_indices": [0],
            "vision_output_dim": 64,  # the last layer's 32 dims + those of the one intermediate layer
        },
        text_config={
            "vocab_size": image_id,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "cross_attention_layers": [1],
            "max_position_embeddings": 2048,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        image_token_index=image_id,
    )


def _open_cross_attention_gates(model) -> None:
    """The text's cross-attention gates start at 0 (tanh(0) = 0: the text ignores the images until trained);
    opened here so that the images reach the answers, as in a trained model."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
                param.fill_(1.0)


def make_tiny_mllama(seed: int = 0, texts: list[str] | None = None, vocab_size: int = 512):
    """(model, processor): a random tiny Llama-3.2-Vision (`MllamaForConditionalGeneration`) and its
    `MllamaProcessor`, in memory.

    Tokenizer: make_tokenizer's, with Llama 3's `<|begin_of_text|>` (bos), header tokens and `<|eot_id|>`
    (eos), and `<|image|>` last: as in Llama-3.2-Vision its id is the text config's `vocab_size`, an input
    embedding the language-model head has no logit for (the model can never sample it). Text: 3 layers of
    hidden size 64, the middle one cross-attending to the vision states. Vision: MLLAMA_TILE-pixel tiles of
    MLLAMA_PATCH-pixel patches, 2 local layers and 1 global, up to MLLAMA_MAX_TILES tiles per image; each
    `<|image|>` token stays one token, and the text after it attends to its image's tiles through the
    processor's per-token `cross_attention_mask`.
    """
    import torch
    from transformers import MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    tokenizer = _mllama_tokenizer(texts, vocab_size)
    image_processor = MllamaImageProcessorPil(
        size={"height": MLLAMA_TILE, "width": MLLAMA_TILE}, max_image_tiles=MLLAMA_MAX_TILES
    )
    processor = MllamaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=MLLAMA_CHAT_TEMPLATE
    )
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(_mllama_config(tokenizer))
    _open_cross_attention_gates(model)
    model.generation_config = _generation_config(tokenizer)
    return model, processor


def build_tiny_vlm(out_dir: str | Path, seed: int = 0, texts: list[str] | None = None) -> Path:
    """Write the tiny random LLaVA and its processor to `out_dir` (a plain Hugging Face folder)."""
    model, processor = make_tiny_vlm(seed, texts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out
