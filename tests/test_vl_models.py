"""Vision-language base models: the tiny LLaVA (`model.base: tiny-random-vl`) and the tiny
Qwen2-VL (M-RoPE), their processors, and loading / saving VL folders through `sftvsrl.models`.

Offline: every model and processor is built in code. Qwen2-VL's processor needs torchvision
(transformers' Qwen2VLProcessor requires a torchvision video processor); without it those tests
skip, and the Qwen2-VL model itself is still tested with its PIL image processor and tokenizer.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from PIL import Image

from sftvsrl import models
from sftvsrl.config import section_with_defaults
from sftvsrl.names import EVAL_OOD_RULE, VL_SPLITS
from sftvsrl.tasks import gp_vl
from sftvsrl.tasks.base import with_images
from sftvsrl.tiny_model import (
    IMAGE_PAD,
    IMAGE_TOKEN,
    VISION_END,
    VISION_START,
    VLM_IMAGE_SIZE,
    VLM_IMAGE_TOKENS,
    make_tiny_qwen2_vl,
    make_tiny_qwen2_vl_parts,
    make_tiny_vlm,
    vl_corpus,
)

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
needs_torchvision = pytest.mark.skipif(not HAS_TORCHVISION, reason="Qwen2VLProcessor needs torchvision")
# A GP-VL hand (4 cards of 80x112 in a strip of about 360x128) through the tiny Qwen2-VL's image
# processor: 28x112 pixels, 2x8 patches of 14, merged 2x2 into 1x4 tokens.
QWEN_GRID = [1, 2, 8]
QWEN_IMAGE_TOKENS = 4


@pytest.fixture(scope="module")
def texts():
    return vl_corpus()


@pytest.fixture(scope="module")
def rows():
    """GP-VL rows in both prompt styles: short (system turn + image turn) and paper (one image turn)."""
    sizes = {split: 2 for split in VL_SPLITS}
    short = gp_vl.generate_splits({"prompt": "short", "sizes": sizes}, 0)
    paper = gp_vl.generate_splits({"prompt": "paper", "sizes": sizes}, 0)
    return {"short": short["sft"][0], "short_ood": short[EVAL_OOD_RULE][0], "paper": paper["sft"][0]}


@pytest.fixture(scope="module")
def llava(texts):
    model, processor = make_tiny_vlm(texts=texts)
    return model.eval(), processor


def chat(row):
    """The row's prompt with its image in the image part, as a processor's chat template reads it."""
    return with_images(row["prompt"], gp_vl.prompt_images(row))


def llava_inputs(processor, rows_):
    text = [processor.apply_chat_template(chat(r), tokenize=False, add_generation_prompt=True) for r in rows_]
    images = [img for r in rows_ for img in gp_vl.prompt_images(r)]
    return processor(text=text, images=images, padding=True, return_tensors="pt")


# ----------------------------------------------------------------------------- tiny LLaVA


def test_tiny_llava_processor_expands_image_token_to_the_towers_patches(llava, rows):
    model, processor = llava
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert model.config.image_token_id == image_id and IMAGE_TOKEN in tok.all_special_tokens
    vision = model.config.vision_config
    assert (vision.image_size // vision.patch_size) ** 2 == VLM_IMAGE_TOKENS == 16
    enc = processor(text=[f"{IMAGE_TOKEN}hello"], images=[gp_vl.row_image(rows["short"])], return_tensors="pt")
    assert enc["pixel_values"].shape == (1, 3, VLM_IMAGE_SIZE, VLM_IMAGE_SIZE)
    assert int((enc["input_ids"] == image_id).sum()) == VLM_IMAGE_TOKENS
    assert tok.decode(enc["input_ids"][0], skip_special_tokens=True) == "hello"
    with torch.no_grad():  # the model accepts it: as many image features as image tokens
        logits = model(**enc).logits
    assert logits.shape == (1, enc["input_ids"].shape[1], len(tok))


def test_tiny_llava_image_processor_keeps_the_whole_picture(llava):
    """A wide picture is squashed to the square, not centre-cropped: its outer columns survive."""
    _, processor = llava
    image = Image.new("RGB", (360, 128), "white")
    for x0 in (0, 324):  # a black band at each side, where the outer cards are
        image.paste((0, 0, 0), (x0, 0, x0 + 36, 128))
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]
    mid = VLM_IMAGE_SIZE // 2
    assert pixels[:, :, 0].mean() < -1 and pixels[:, :, -1].mean() < -1  # black, normalised
    assert pixels[:, :, mid].mean() > 1  # white


@pytest.mark.parametrize("style", ["short", "paper"])
def test_chat_template_renders_one_image_placeholder_and_the_text(llava, rows, style):
    _, processor = llava
    row = rows[style]
    text = processor.apply_chat_template(chat(row), tokenize=False, add_generation_prompt=True)
    *head, user = row["prompt"]
    parts = user["content"]
    assert [p["type"] for p in parts] == ["image", "text"]
    assert text.count(IMAGE_TOKEN) == 1
    assert f"<|im_start|>user\n{IMAGE_TOKEN}{parts[1]['text']}<|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")
    for message in head:  # the short style's system turn: plain string content
        assert f"<|im_start|>{message['role']}\n{message['content']}<|im_end|>\n" in text
    assert text.startswith("<|im_start|>system\n" if style == "short" else "<|im_start|>user\n")
    # an assistant turn given as parts renders too, and the tokenizer holds the same template
    answer = [{"role": "assistant", "content": [{"type": "text", "text": '{"cards": []}'}]}]
    full = processor.apply_chat_template(chat(row) + answer, tokenize=False)
    assert full.endswith('<|im_start|>assistant\n{"cards": []}<|im_end|>\n')
    assert processor.tokenizer.apply_chat_template(chat(row), tokenize=False, add_generation_prompt=True) == text


def test_tiny_llava_is_deterministic_in_seed(llava, texts):
    model, _ = llava
    again, _ = make_tiny_vlm(seed=0, texts=texts)
    other, _ = make_tiny_vlm(seed=1, texts=texts)
    ref = model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in again.state_dict().items())
    assert not torch.equal(ref["lm_head.weight"], other.state_dict()["lm_head.weight"])


def test_tiny_llava_save_load_round_trip_same_logits(llava, rows, tmp_path):
    model, processor = llava
    models.save_model(model, processor, tmp_path / "vl")
    assert models.is_vision_language(tmp_path / "vl") and models.has_processor(tmp_path / "vl")
    loaded, proc = models.load_model_and_processor(tmp_path / "vl", dtype="float32")
    assert type(loaded) is type(model) and not loaded.training
    assert type(proc).__name__ == "LlavaProcessor" and proc.tokenizer.padding_side == "left"
    assert (proc.patch_size, proc.num_additional_image_tokens, proc.vision_feature_select_strategy) == (
        8,
        1,
        "default",
    )
    enc = llava_inputs(processor, [rows["short"]])
    enc2 = llava_inputs(proc, [rows["short"]])
    assert torch.equal(enc["input_ids"], enc2["input_ids"]) and torch.equal(enc["pixel_values"], enc2["pixel_values"])
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, loaded(**enc2).logits, atol=1e-6)


def test_tiny_llava_generates_a_left_padded_batch_of_gp_vl_prompts(llava, rows):
    model, processor = llava
    processor.tokenizer.padding_side = "left"
    batch = [rows["short"], rows["paper"]]
    enc = llava_inputs(processor, batch)
    mask = enc["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()  # the short prompt is padded on the left
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=4, do_sample=False)
        assert out.shape == (2, enc["input_ids"].shape[1] + 4)
        assert torch.equal(out[:, : enc["input_ids"].shape[1]], enc["input_ids"])
        # padding changes nothing: each prompt's next-token logits as when it is alone
        last = model(**enc).logits[:, -1]
        for i, row in enumerate(batch):
            alone = model(**llava_inputs(processor, [row])).logits[0, -1]
            assert torch.allclose(last[i], alone, atol=1e-5)


# ----------------------------------------------------------------------------- through sftvsrl.models


def test_materialise_tiny_random_vl_loads_as_a_vl_model(tmp_path, tiny_model_dir):
    section = section_with_defaults("model", {"base": models.TINY_RANDOM_VL, "name": "tiny-vl"})
    out = models.materialise_base_model(section, tmp_path / "base")
    assert models.is_vision_language(out) and not models.is_vision_language(tiny_model_dir)
    assert json.loads((out / models.BASE_INFO_FILE).read_text())["base"] == "tiny-random-vl"
    model, processor = models.load_model_and_processor(out)
    tok = processor.tokenizer
    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert model.config.text_config.eos_token_id == tok.eos_token_id
    assert model.config.image_token_id == tok.convert_tokens_to_ids(IMAGE_TOKEN)
    # load_tokenizer gives the processor's tokenizer, chat template and image token included
    alone = models.load_tokenizer(out)
    assert alone.padding_side == "left" and alone.chat_template == processor.chat_template
    assert alone.convert_tokens_to_ids(IMAGE_TOKEN) == model.config.image_token_id
    # the folder as model.base (a local VL folder): the same weights again
    again = models.materialise_base_model({**section, "base": str(out)}, tmp_path / "again")
    reloaded, _ = models.load_model_and_processor(again)
    ref = model.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in reloaded.state_dict().items())


def test_text_folder_loads_through_load_model_and_processor_as_a_tokenizer(tiny_model_dir):
    from transformers import PreTrainedTokenizerBase

    model, tok = models.load_model_and_processor(tiny_model_dir, dtype="float32")
    assert isinstance(tok, PreTrainedTokenizerBase) and tok.padding_side == "left"
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert not models.has_processor(tiny_model_dir)


# ----------------------------------------------------------------------------- tiny Qwen2-VL (M-RoPE)


@pytest.fixture(scope="module")
def qwen_parts(texts):
    model, image_processor, tokenizer = make_tiny_qwen2_vl_parts(texts=texts)
    tokenizer.padding_side = "left"
    return model.eval(), image_processor, tokenizer


def qwen_inputs(image_processor, tokenizer, rows_):
    """What Qwen2VLProcessor makes, by hand: each image's pad token repeated grid/merge^2 times,
    and mm_token_type_ids (1 on image tokens) for M-RoPE."""
    images = image_processor([gp_vl.row_image(r) for r in rows_], return_tensors="pt")
    merge = image_processor.merge_size**2
    text = []
    for row, grid in zip(rows_, images["image_grid_thw"]):
        rendered = tokenizer.apply_chat_template(chat(row), tokenize=False, add_generation_prompt=True)
        text.append(rendered.replace(IMAGE_PAD, IMAGE_PAD * (int(grid.prod()) // merge)))
    enc = tokenizer(text, padding=True, return_tensors="pt")
    enc["mm_token_type_ids"] = (enc["input_ids"] == tokenizer.convert_tokens_to_ids(IMAGE_PAD)).long()
    enc.update(images)
    return enc


def test_tiny_qwen2_vl_m_rope_lays_image_tokens_on_the_grid(qwen_parts, rows):
    model, image_processor, tokenizer = qwen_parts
    batch = [rows["short"], rows["paper"]]
    enc = qwen_inputs(image_processor, tokenizer, batch)
    assert enc["image_grid_thw"].tolist() == [QWEN_GRID, QWEN_GRID]
    pad_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert (enc["input_ids"] == pad_id).sum(1).tolist() == [QWEN_IMAGE_TOKENS] * 2
    assert model.config.image_token_id == pad_id
    assert model.config.vision_start_token_id == tokenizer.convert_tokens_to_ids(VISION_START)
    assert model.config.vision_end_token_id == tokenizer.convert_tokens_to_ids(VISION_END)
    positions, _ = model.model.get_rope_index(
        enc["input_ids"],
        mm_token_type_ids=enc["mm_token_type_ids"],
        image_grid_thw=enc["image_grid_thw"],
        attention_mask=enc["attention_mask"],
    )
    assert positions.shape == (3, 2, enc["input_ids"].shape[1])
    for i in range(2):
        real = enc["attention_mask"][i].bool()
        pos = positions[:, i][:, real]  # (t, h, w) of the real tokens
        image = (enc["input_ids"][i][real] == pad_id).nonzero().flatten()
        start = int(pos[0, image[0]])
        # on the image: one time step, one row of 4 merged patches along the width
        assert pos[0, image].tolist() == [start] * 4 and pos[1, image].tolist() == [start] * 4
        assert pos[2, image].tolist() == [start + k for k in range(4)]
        # text: the three rows agree, from 0 after the left padding, and resume after the image's extent
        before, after = pos[:, : image[0]], pos[:, image[-1] + 1 :]
        assert torch.equal(before[0], before[1]) and torch.equal(before[0], before[2])
        assert before[0].tolist() == list(range(int(image[0])))
        assert after[0, 0] == start + 4 and torch.equal(after[0], after[2])


def test_tiny_qwen2_vl_left_padding_and_round_trip(qwen_parts, rows, tmp_path):
    model, image_processor, tokenizer = qwen_parts
    batch = [rows["short_ood"], rows["paper"]]
    enc = qwen_inputs(image_processor, tokenizer, batch)
    with torch.no_grad():
        last = model(**enc).logits[:, -1]
        for i, row in enumerate(batch):
            alone = model(**qwen_inputs(image_processor, tokenizer, [row])).logits[0, -1]
            assert torch.allclose(last[i], alone, atol=1e-5)
        out = model.generate(**enc, max_new_tokens=3, do_sample=False)
        assert out.shape == (2, enc["input_ids"].shape[1] + 3)
        with pytest.raises(ValueError, match="mm_token_type_ids"):  # M-RoPE cannot guess where the image is
            model(**{k: v for k, v in enc.items() if k != "mm_token_type_ids"})
    # saved as a plain folder (no processor_config: the parts), it reloads as the same model
    folder = tmp_path / "qwen"
    models.save_model(model, tokenizer, folder)
    image_processor.save_pretrained(folder)
    assert models.is_vision_language(folder)
    from transformers import AutoConfig

    cls = models.vl_model_class(AutoConfig.from_pretrained(folder))
    loaded = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(**enc).logits[:, -1], last, atol=1e-6)
    assert models.load_tokenizer(folder).convert_tokens_to_ids(IMAGE_PAD) == model.config.image_token_id
    if not HAS_TORCHVISION:
        with pytest.raises(models.BaseModelError, match="torchvision"):
            models.load_model_and_processor(folder)
        with pytest.raises(ImportError, match="torchvision"):
            make_tiny_qwen2_vl()


@needs_torchvision
def test_tiny_qwen2_vl_processor_expands_image_pad_and_round_trips(texts, rows, tmp_path):
    model, processor = make_tiny_qwen2_vl(texts=texts)
    model.eval()
    text = processor.apply_chat_template(chat(rows["short"]), tokenize=False, add_generation_prompt=True)
    assert text.count(VISION_START + IMAGE_PAD + VISION_END) == 1
    enc = processor(text=[text], images=gp_vl.prompt_images(rows["short"]), return_tensors="pt")
    assert enc["image_grid_thw"].tolist() == [QWEN_GRID]
    assert int((enc["input_ids"] == model.config.image_token_id).sum()) == QWEN_IMAGE_TOKENS
    assert int(enc["mm_token_type_ids"].sum()) == QWEN_IMAGE_TOKENS
    models.save_model(model, processor, tmp_path / "qwen")
    loaded, proc = models.load_model_and_processor(tmp_path / "qwen", dtype="float32")
    enc2 = proc(text=[text], images=gp_vl.prompt_images(rows["short"]), return_tensors="pt")
    assert torch.equal(enc["input_ids"], enc2["input_ids"])
    with torch.no_grad():
        assert torch.allclose(model(**enc).logits, loaded(**enc2).logits, atol=1e-6)
