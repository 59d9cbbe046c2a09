"""The rollout engine and RL with two more vision-language families, as tiny random models with their
real processors (PIL image processors): Idefics3 / SmolVLM (image features merged into `<image>`
tokens, pixels batched [batch, images, 3, H, W] with a pixel mask, plain 1-D positions: the KV cache
is kept between rounds) and Llama-3.2-Vision / mllama (one `<|image|>` token per image, the text
cross-attends to image tiles through a per-token `cross_attention_mask`; its cache holds vision
states, so every round re-reads the conversation)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import write_jsonl
from reference_rollout import run_scripted
from sftvsrl import generator
from sftvsrl.model_inputs import image_inputs, reuses_cache
from sftvsrl.rollout import RolloutStats, run_episodes
from sftvsrl.tasks import get_task
from sftvsrl.tasks.base import with_images
from sftvsrl.tiny_model import IDEFICS3_IMAGE_SEQ_LEN, MLLAMA_BOS, MLLAMA_IMAGE
from sftvsrl.turns import encode_prompt
from vl_toys import GP_VL_CFG, PictureEpisode, PictureTask, picture, picture_row

FAMILIES = ("idefics3", "mllama")
SEED = 2  # a tiny model whose greedy answers to GP-VL hands depend on the cards (rows give different answers)


def make_family(family: str):
    from sftvsrl.tiny_model import make_tiny_idefics3, make_tiny_mllama

    return {"idefics3": make_tiny_idefics3, "mllama": make_tiny_mllama}[family](seed=SEED)


@pytest.fixture(scope="module")
def models():
    """Each family's tiny model (eval mode) and processor, built once."""
    built = {}
    for family in FAMILIES:
        model, processor = make_family(family)
        built[family] = model.eval(), processor
    return built


@pytest.fixture(params=FAMILIES)
def vlm(request, models):
    return request.param, *models[request.param]


@pytest.fixture(scope="module")
def rows():
    return get_task("gp_vl").generate_splits(GP_VL_CFG, 0)["rl"]


def gp_episodes(rows, viter, repeat=1):
    task = get_task("gp_vl")
    return [task.make_episode(row, viter) for row in rows for _ in range(repeat)]


def full_tokens(processor, episode, add_generation_prompt=False) -> list[int]:
    """The processor's own tokens of the episode's whole conversation with all its images."""
    rendered = processor.apply_chat_template(
        with_images(episode.messages, episode.images),
        add_generation_prompt=add_generation_prompt,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    return rendered["input_ids"][0].tolist()


# --------------------------------------------------------------------------- tokens and image inputs
def test_prompt_ids_are_the_processors_own_tokens(vlm, rows):
    family, model, processor = vlm
    (ep,) = gp_episodes(rows[:1], 2)
    ids = encode_prompt(processor, ep.messages, ep.images)
    assert ids == full_tokens(processor, ep, add_generation_prompt=True)
    tok = processor.tokenizer
    image_id = model.config.image_token_id
    if family == "idefics3":  # <fake_token_around_image><global-img><image>*4<fake_token_around_image>
        assert ids.count(image_id) == IDEFICS3_IMAGE_SEQ_LEN
        assert ids.count(tok.convert_tokens_to_ids("<fake_token_around_image>")) == 2
        assert ids.count(tok.convert_tokens_to_ids("<global-img>")) == 1
    else:  # one <|image|> token, one bos (the template's)
        assert ids.count(tok.convert_tokens_to_ids(MLLAMA_IMAGE)) == 1
        assert ids.count(tok.convert_tokens_to_ids(MLLAMA_BOS)) == 1 and ids[0] == tok.bos_token_id


def test_image_inputs_of_a_left_padded_batch_are_the_processors_own(vlm, rows):
    """For the ids as fed (two prompts of different lengths, left-padded), `image_inputs` gives what the
    processor gives for the same batch: pixels in the model's layout and, for mllama, the per-token
    cross-attention mask at the padded positions."""
    family, model, processor = vlm
    (gp,) = gp_episodes(rows[:1], 2)
    look = PictureEpisode(picture_row(3), 2)
    texts = [
        processor.apply_chat_template(ep.messages, tokenize=False, add_generation_prompt=True) for ep in (gp, look)
    ]
    own = processor(text=texts, images=[gp.images, look.images], padding=True, return_tensors="pt")
    assert own["attention_mask"][1].sum() < own["attention_mask"][0].sum()  # the second row is padded
    ours = image_inputs(processor, model, own["input_ids"], [gp.images, look.images])
    expected = {"idefics3": {"pixel_values", "pixel_attention_mask"}}.get(
        family, {"pixel_values", "aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"}
    )
    assert set(ours) == expected
    for key in expected:
        assert torch.equal(ours[key], own[key]), key
    if family == "mllama":  # the tokens from a row's <|image|> on see its tiles (the wide hand 2, the square 1)
        for row, (ids, tiles) in enumerate(zip(own["input_ids"].tolist(), (2, 1))):
            first = ids.index(model.config.image_token_id)
            seen = ours["cross_attention_mask"][row, :, 0]
            assert seen[:first].sum() == 0 and seen[first:, :tiles].all() and seen[:, tiles:].sum() == 0


def test_mllama_needs_the_images_of_every_row(models):
    model, processor = models["mllama"]
    ids = torch.tensor([[1, 2, model.config.image_token_id], [1, 2, 3]])
    with pytest.raises(ValueError, match="every row"):
        image_inputs(processor, model, ids, [[picture(0)], []])


# --------------------------------------------------------------------------- rollouts
def test_greedy_gp_vl_answers_are_the_same_with_and_without_the_cache_and_one_by_one(vlm, rows):
    family, model, processor = vlm
    kw = {"temperature": 0.0, "max_new_tokens": 8}
    cached, plain = RolloutStats(), RolloutStats()
    batched = run_episodes(model, processor, gp_episodes(rows[:3], 3, repeat=2), stats=cached, **kw)
    uncached = run_episodes(model, processor, gp_episodes(rows[:3], 3, repeat=2), reuse_cache=False, stats=plain, **kw)
    single = [run_episodes(model, processor, gp_episodes([row], 3), **kw)[0] for row in rows[:3]]
    assert [t.completion_ids for t in batched] == [t.completion_ids for t in uncached]
    assert [t.completion_ids for t in batched[::2]] == [t.completion_ids for t in single]
    assert all(len(t.attempts) == 3 for t in batched)
    answers = {tuple(a.answer for a in t.attempts) for t in single}
    assert len(answers) > 1, "the hands' images do not change the answers: this test would not see them misfed"
    if family == "idefics3":  # 1-D positions: the cache is kept, later rounds read only their new tokens
        assert reuses_cache(model)
        assert cached.prefill_tokens < plain.prefill_tokens / 2
    else:  # cross-attention: every round re-reads the conversation with its image
        assert not reuses_cache(model) and not reuses_cache(model, images=False)
        assert cached.prefill_tokens == plain.prefill_tokens


def test_one_forward_pass_over_the_episode_predicts_its_greedy_answers(vlm, rows):
    """Teacher forcing: one forward pass over prompt + completion, with `image_inputs` for the whole
    sequence (what the RL loss pass gets), predicts every greedily sampled token. So generation read
    the same inputs: for mllama, the cross-attention mask that generate extends token by token."""
    _family, model, processor = vlm
    (trace,) = run_episodes(model, processor, gp_episodes(rows[:1], 2), temperature=0.0, max_new_tokens=8)
    ids = torch.tensor([trace.prompt_ids + trace.completion_ids])
    with torch.no_grad():
        out = model(
            input_ids=ids, attention_mask=torch.ones_like(ids), **image_inputs(processor, model, ids, [trace.images])
        )
    logits = out.logits[0]
    image_id = model.config.image_token_id
    if image_id < logits.shape[-1]:  # generation never samples the image token (Idefics3 suppresses it)
        logits[:, image_id] = -torch.inf
    predicted = logits.argmax(-1).tolist()
    start = len(trace.prompt_ids)
    sampled = [(start + j, t) for j, (t, m) in enumerate(zip(trace.completion_ids, trace.env_mask)) if m]
    assert len(sampled) == 16  # two attempts of 8 tokens
    assert [predicted[pos - 1] for pos, _ in sampled] == [t for _, t in sampled]


def test_each_row_reads_its_own_images_when_only_some_rows_bring_new_ones(vlm, monkeypatch):
    """Pictures in the prompt and, for every other episode, in later turns: a round's generate call then
    feeds new pixels for some rows only (Idefics3 with its cache), or all of every row's (mllama). Greedy
    answers are the same batched with the cache, without it, and one episode at a time, and they differ
    from picture to picture."""
    family, model, processor = vlm
    fed = []
    original = generator.image_inputs

    def spy(tokenizer, model, input_ids, images_per_row):
        fed.append([len(images) for images in images_per_row])
        return original(tokenizer, model, input_ids, images_per_row)

    monkeypatch.setattr(generator, "image_inputs", spy)

    def episodes():
        return [PictureEpisode(picture_row(i), 3, show_more=i % 2 == 0) for i in range(4)]

    kw = {"temperature": 0.0, "max_new_tokens": 6}
    batched = run_episodes(model, processor, episodes(), **kw)
    calls = list(fed)
    uncached = run_episodes(model, processor, episodes(), reuse_cache=False, **kw)
    single = [run_episodes(model, processor, [ep], **kw)[0] for ep in episodes()]
    answers = [[a.answer for a in t.attempts] for t in batched]
    assert answers == [[a.answer for a in t.attempts] for t in uncached]
    assert answers == [[a.answer for a in t.attempts] for t in single]
    assert [t.completion_ids for t in batched] == [t.completion_ids for t in single]
    assert len({a[0] for a in answers}) >= 3, "the first answers do not depend on the pictures"
    assert [len(t.images) for t in batched] == [
        1 + (len(t.attempts) - 1) * (i % 2 == 0) for i, t in enumerate(batched)
    ]
    # pictures fed per generate call (round k, the episodes still running): Idefics3 keeps its cache, so
    # round 1 reads every prompt picture and later rounds only the new one of every other episode; mllama
    # reads every picture of every episode again each round
    running = [[i for i, t in enumerate(batched) if len(t.attempts) >= k] for k in range(1, 4)]
    if family == "idefics3":
        expected = [[1] * len(running[0])] + [[int(i % 2 == 0) for i in ids] for ids in running[1:]]
    else:
        expected = [[k if i % 2 == 0 else 1 for i in ids] for k, ids in enumerate(running, 1)]
    assert calls == [c for c in expected if c], calls


def test_scripted_episode_with_later_images_splices_to_the_full_conversation(vlm):
    """Attempts answered by turns that bring a new picture: prompt + completion are the processor's own
    tokens of the whole conversation with all its images, and only the answers are in the loss mask."""
    family, _model, processor = vlm
    tok = processor.tokenizer
    answers = ["a b", "a a", "no"]

    def scripted(batch):
        text = answers[len(calls)]
        calls.append(text)
        return [tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]] * len(batch)

    calls = []
    ep = PictureEpisode(picture_row(2), 3)
    (trace,) = run_scripted(processor, [ep], scripted)
    assert len(trace.attempts) == 3 and len(ep.images) == 3 and trace.images == ep.images
    full = full_tokens(processor, ep)
    seq = trace.prompt_ids + trace.completion_ids
    assert full[: len(seq)] == seq
    # what follows the last answer's eos: ChatML's newline (Idefics3's template), nothing in Llama 3's
    assert tok.decode(full[len(seq) :]) == ("\n" if family == "idefics3" else "")
    sampled = [t for t, m in zip(trace.completion_ids, trace.env_mask) if m]
    assert tok.decode(sampled) == "".join(a + tok.eos_token for a in answers)
    if family == "mllama":  # a context turn with an image brings no second bos
        assert seq.count(tok.bos_token_id) == 1


# --------------------------------------------------------------------------- RL
@pytest.fixture(scope="module")
def family_dirs(models, tmp_path_factory):
    """Each tiny model saved with its processor: the folder RL starts from."""
    dirs = {}
    for family, (model, processor) in models.items():
        out = tmp_path_factory.mktemp(family) / "model"
        model.save_pretrained(out)
        processor.save_pretrained(out)
        dirs[family] = out
    return dirs


@pytest.mark.parametrize("family", FAMILIES)
def test_one_rl_step_with_later_images_moves_the_weights(family, family_dirs, tiny_config, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from sftvsrl import grpo, rl

    start_dir = family_dirs[family]
    monkeypatch.setattr(rl, "get_task", lambda name: PictureTask())
    if family == "idefics3":  # as the LLaVA test: two iterations (old log-probs) and a KL term (reference)
        tiny_config["rl"].update(num_iterations=2, beta=0.04)
    else:  # TRL 1.16 passes mllama's aspect ratios and cross-attention mask to a function that takes neither
        tiny_config["rl"].update(num_iterations=1, beta=0.0)
    # one micro-batch a step: the passes counted below are one rollout's
    tiny_config["rl"].update(
        learning_rate=1e-3, steps=1, checkpoint_steps=[1], save_every=1, max_new_tokens=8, grad_accum=1
    )
    rows = [picture_row(i) for i in range(2)]
    out = tmp_path / "results" / "ckpt-1" / "model"
    swapped = []  # per model pass the hook changed: (inputs it added, TRL's images per row, the episodes')
    original = grpo.EpisodeImages._swap_images

    def spy(self, model, args, kwargs):
        new = original(self, model, args, kwargs)
        if new is not None:
            added = sorted(set(new[1]) - set(kwargs))
            swapped.append((added, kwargs["pixel_values"].shape[1], new[1]["pixel_values"].shape[1]))
        return new

    monkeypatch.setattr(grpo.EpisodeImages, "_swap_images", spy)
    summary = rl.run_rl(
        tiny_config,
        task="pictures",
        seed=0,
        viter=2,
        run_name=f"rl-{family}",
        data_file=str(write_jsonl(rows, tmp_path / "data" / "rl.jsonl")),
        start_dir=str(start_dir),
        save_dirs={1: str(out)},
        work_dir=str(tmp_path / "work"),
    )
    assert summary["final_step"] == 1
    # every pass of the update got the episodes' images: old log-probs, reference and loss (Idefics3);
    # the loss, with the aspect ratios and cross-attention mask TRL leaves out (mllama)
    added = [] if family == "idefics3" else ["aspect_ratio_ids", "aspect_ratio_mask", "cross_attention_mask"]
    assert [a for a, _, _ in swapped] == [added] * (3 if family == "idefics3" else 1)
    assert all(used == 2 > given == 1 for _, given, used in swapped)  # the prompt's picture, and the next one
    start, trained = load_file(str(start_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert any("vision" in k for k in moved), "the vision tower got no gradient"
    assert any("language_model" in k or "text_model" in k for k in moved)
    assert json.loads((out / "config.json").read_text())["model_type"] == family


def test_mllama_rl_with_old_log_probs_and_a_kl_term_fails_inside_trl(family_dirs, tiny_config, tmp_path, monkeypatch):
    """TRL's GRPOTrainer hands every processor output but the ids to `_get_per_token_logps_and_entropies`,
    which takes no `aspect_ratio_ids`, `aspect_ratio_mask` or `cross_attention_mask`: its old-log-prob pass
    (rl.num_iterations > 1) and reference pass (rl.beta > 0) raise TypeError for mllama. This test fails
    once TRL runs them: then mllama can drop the restriction."""
    from sftvsrl import rl

    monkeypatch.setattr(rl, "get_task", lambda name: PictureTask())
    tiny_config["rl"].update(
        steps=1, checkpoint_steps=[1], save_every=1, max_new_tokens=4, num_iterations=2, beta=0.04
    )
    kw = {
        "task": "pictures",
        "seed": 0,
        "viter": 1,
        "run_name": "rl-mllama-kl",
        "data_file": str(write_jsonl([picture_row(i) for i in range(2)], tmp_path / "data" / "rl.jsonl")),
        "start_dir": str(family_dirs["mllama"]),
        "save_dirs": {1: str(tmp_path / "out")},
        "work_dir": str(tmp_path / "work"),
    }
    # the job stops first, naming the keys to change
    with pytest.raises(ValueError, match=r"rl\.num_iterations / rl\.beta: .* runs only rl\.num_iterations 1"):
        rl.run_rl(tiny_config, **kw)
    monkeypatch.setattr(rl, "check_model_passes", lambda *args: None)  # past the check: TRL's own error
    unexpected = "unexpected keyword argument '(cross_attention_mask|aspect_ratio_ids|aspect_ratio_mask)'"
    with pytest.raises(TypeError, match=unexpected):
        rl.run_rl(tiny_config, **kw)


def test_mllama_sft_batches_cover_each_whole_row_and_train(models, tiny_config, tmp_path):
    """TRL 1.16's vision collator gives mllama a cross-attention mask for the prompt only (the model then
    fails) and a second bos before each completion; `sft.CrossAttentionCollator` fixes both."""
    from sftvsrl import sft

    model, processor = make_family("mllama")
    rows = get_task("gp_vl").generate_splits(GP_VL_CFG, 0)["sft"][:4]
    tiny_config["sft"].update(batch_size=2, grad_accum=1, max_length=1024)
    args = sft.build_sft_config(tiny_config, max_steps=1, seed=0, work_dir=tmp_path / "work", save_strategy="no")
    trainer = sft.build_trainer(tiny_config, model, processor, sft.sft_dataset(rows, "gp_vl"), args)
    assert isinstance(trainer.data_collator, sft.CrossAttentionCollator)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels = batch["input_ids"], batch["labels"]
    assert batch["cross_attention_mask"].shape[:2] == ids.shape
    bos = processor.tokenizer.convert_tokens_to_ids(MLLAMA_BOS)
    assert ((ids == bos).sum(-1) == 1).all() and not (labels == bos).any()  # one bos a row, none trained
    for i, row in enumerate(rows[:2]):  # what is trained is the completion, token for token
        trained = labels[i][labels[i] != -100].tolist()
        expected = processor.tokenizer(row["completion"][0]["content"], add_special_tokens=False)["input_ids"]
        assert trained[: len(expected)] == expected
    # the tokens from <|image|> on see its tiles, to the row's end
    image = (ids == processor.tokenizer.convert_tokens_to_ids(MLLAMA_IMAGE)).int().argmax(-1)
    seen = batch["cross_attention_mask"].sum((-1, -2)) > 0
    for i in range(len(ids)):
        assert seen[i, image[i] :][batch["attention_mask"][i, image[i] :].bool()].all()
    assert trainer.train().training_loss > 0
