"""Tiny random models with real, local tokenizers and processors: for tests and CI, no model hub needed.

Every model here is built from a config with random weights (fixed seed); the tokenizer is always the real
SmolLM2-135M-Instruct tokenizer from the embedded GGUF (``vlmq_core.model.embedded_dir()``), so chat
templates, stop tokens and tokenisation are exactly those of a real model.

- :func:`embedded_tokenizer` -- the SmolLM2 tokenizer (cached on disk after the first load).
- :func:`tiny_llama` -- a 2-layer LlamaForCausalLM (hidden 64) over the SmolLM2 vocabulary.
- :func:`tiny_idefics3` -- a SmolVLM-shaped Idefics3ForConditionalGeneration with an ``Idefics3Processor``.
- :func:`tiny_llava` -- a LLaVA-1.5-shaped LlavaForConditionalGeneration (CLIP tower) with a ``LlavaProcessor``.
- :func:`tiny_embedded_vlm` -- :func:`tiny_llama` behind a tiny vlmq vision tower, assembled as ``embedded-vlm`` is.
- :func:`save_tiny` -- write a model + processor folder that ``load_policy`` loads like a hub checkpoint.
"""

from __future__ import annotations

import copy
import functools
import os
import shutil
import tempfile
from pathlib import Path

import torch

from vlmq_core.model import EMBEDDED_GGUF, embedded_dir
from vlmq_core.vision import TowerConfig, assemble

SMOLVLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
"""SmolVLM-Instruct's chat template (HuggingFaceTB/SmolVLM-256M-Instruct)."""

IDEFICS3_TOKENS = ("<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>")
"""Special tokens SmolVLM adds to the SmolLM2 tokenizer (row/col tokens are not needed without splitting)."""

LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A LLaVA-style template on SmolLM2's ChatML markers (image first in the user turn, ``<|im_end|>`` ends a turn)."""

TINY_TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
"""Size of every tiny text decoder."""

TINY_IMAGE_SIZE, TINY_PATCH, TINY_SCALE = 64, 8, 2
"""Vision tower input size, patch size and Idefics3 pixel-shuffle scale: (64/8)^2 / 2^2 = 16 image tokens."""


def _cache_dir() -> Path:
    return Path(os.environ.get("VLMQ_CACHE", Path.home() / ".cache" / "vlmq"))


@functools.lru_cache(maxsize=1)
def _load_embedded_tokenizer():
    from transformers import AutoTokenizer

    gguf = Path(embedded_dir()) / EMBEDDED_GGUF
    st = gguf.stat()
    folder = _cache_dir() / f"smollm2-tokenizer-{st.st_size}-{int(st.st_mtime)}"
    if (folder / "tokenizer_config.json").is_file():
        try:
            return AutoTokenizer.from_pretrained(folder)  # ~0.4 s
        except (OSError, ValueError):
            shutil.rmtree(folder, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)  # ~6 s: parses the GGUF
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-tokenizer-"))
        tok.save_pretrained(tmp)
        try:
            tmp.rename(folder)  # atomic; another process may have won the race
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # read-only home: still works, just slower next time
    return tok


def embedded_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (chat template, ``<|im_end|>``), a fresh copy per call.

    Parsing the GGUF takes ~6 s, so the first load is saved under ``$VLMQ_CACHE`` (default ``~/.cache/vlmq``)
    and kept in memory; callers get a deep copy they may modify (add tokens, change padding side).
    """
    return copy.deepcopy(_load_embedded_tokenizer())


def _llama_config(vocab_size: int, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        **TINY_TEXT,
        num_key_value_heads=TINY_TEXT["num_attention_heads"],
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_llama(seed: int = 0):
    """``(model, tokenizer)``: a random 2-layer LlamaForCausalLM (hidden 64, 4 heads, tied embeddings)
    over the full SmolLM2 vocabulary (49152), with the real SmolLM2 tokenizer. Model in eval mode, float32."""
    from transformers import LlamaForCausalLM

    tok = embedded_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(len(tok), tok))
    return model.eval(), tok


def tiny_idefics3(seed: int = 0, image_splitting: bool = False):
    """``(model, processor)``: a random SmolVLM-shaped Idefics3ForConditionalGeneration and its processor.

    Text decoder as :func:`tiny_llama` (vocabulary = SmolLM2 + the 4 SmolVLM image/turn tokens); vision tower
    hidden 32, 1 layer, 64x64 images in 8x8 patches, pixel shuffle 2 -> 16 ``<image>`` tokens per image.
    The processor is a real ``Idefics3Processor`` (PIL image processor, no splitting) with SmolVLM's chat
    template, so a reply ends with ``<end_of_utterance>``. With ``image_splitting`` (SmolVLM's default) images
    are resized to a longest edge of 128 and split into up to 2x2 crops of 64 plus the global image, so images
    of different shapes give different numbers of crops; the 36 ``<row_i_col_j>`` tokens are added too.
    """
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tok = embedded_tokenizer()
    extra = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)] if image_splitting else []
    tok.add_special_tokens({"additional_special_tokens": [*IDEFICS3_TOKENS, *extra]})
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=image_splitting,
        size={"longest_edge": TINY_IMAGE_SIZE * (2 if image_splitting else 1)},
        max_image_size={"longest_edge": TINY_IMAGE_SIZE},
    )
    seq_len = (TINY_IMAGE_SIZE // TINY_PATCH) ** 2 // TINY_SCALE**2
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tok, image_seq_len=seq_len, chat_template=SMOLVLM_CHAT_TEMPLATE
    )
    text = _llama_config(len(tok), tok).to_dict()
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": TINY_IMAGE_SIZE,
        "patch_size": TINY_PATCH,
    }
    config = Idefics3Config(
        text_config=text,
        vision_config=vision,
        scale_factor=TINY_SCALE,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration(config)
    return model.eval(), processor


def tiny_llava(seed: int = 0):
    """``(model, processor)``: a random LLaVA-1.5-shaped LlavaForConditionalGeneration and its processor.

    Text decoder as :func:`tiny_llama` (vocabulary = SmolLM2 + ``<image>``); CLIP vision tower hidden 32,
    2 layers, 32x32 images in 8x8 patches, features of the second-to-last layer without CLS -> 16 ``<image>``
    tokens per image. The processor is a real ``LlavaProcessor`` (PIL CLIP image processor) with
    :data:`LLAVA_CHAT_TEMPLATE`, so a reply ends with ``<|im_end|>``.
    """
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = embedded_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    size, patch = 32, 8
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        num_additional_image_tokens=1,  # CLIP's CLS, dropped by the "default" strategy
    )
    vision = {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": size,
        "patch_size": patch,
        "projection_dim": 32,
    }
    config = LlavaConfig(
        text_config=_llama_config(len(tok), tok).to_dict(),
        vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_seq_length=(size // patch) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    return model.eval(), processor


TINY_TOWER = TowerConfig(image_size=32, patch_size=8, hidden_size=32, layers=1, heads=2, intermediate_size=64)
"""A tiny vlmq vision tower: 32x32 images in 8x8 patches -> 16 ``<image>`` tokens."""


def tiny_embedded_vlm(seed: int = 0):
    """``(model, processor)``: :func:`tiny_llama` behind :data:`TINY_TOWER` and its projector, put together by
    :func:`vlmq_core.vision.assemble` exactly as ``model.name=embedded-vlm`` puts the real ones (random weights)."""
    lm, tok = tiny_llama(seed)
    return assemble(lm, tok, TINY_TOWER, seed=seed)


def save_tiny(model, processor, folder: str | os.PathLike) -> Path:
    """Write ``model`` (safetensors + config) and its tokenizer/processor to ``folder``, in the layout of a
    hub checkpoint, so ``load_policy(PolicyConfig(model=ModelConfig(name=str(folder))))`` loads it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
