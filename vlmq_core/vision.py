"""The embedded VLM: a small vision tower and LLaVA's projector in front of the embedded SmolLM2-135M-Instruct.

The model is transformers' own ``LlavaForConditionalGeneration``: a SigLIP vision transformer (trained from
scratch on vlmq's renders, :mod:`vlmq_core.sight`), LLaVA-1.5's two-layer projector, and the embedded GGUF's
SmolLM2-135M-Instruct with one added token, ``<image>``, whose embedding row is never read (LLaVA puts the image
features in its place) and is set to the mean row. Its processor is a real ``LlavaProcessor`` (SigLIP's image
processor) with a ChatML template, so a reply ends with ``<|im_end|>`` as the text model's does. Only the tower
and the projector are stored (:data:`WEIGHTS`, a few MB); the language model comes from the GGUF at load time.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlmq_core.config import ConfigError, check_fields, require

EMBEDDED_VLM = "embedded-vlm"
"""Its ``model.name``."""
IMAGE_TOKEN = "<image>"
WEIGHTS = Path(__file__).parent / "weights" / "embedded_vlm"
"""Folder of the shipped vision weights: ``tower.json`` (:class:`TowerConfig` and how it was built) and
``vision.safetensors`` (``vision_tower.*`` and ``multi_modal_projector.*``), and ``build_log.json``."""
BUILD_LOG = "build_log.json"
"""The build's log beside the weights: its curves and held-out checks, for a notebook that shows them unbuilt."""
VISION_PREFIXES = ("vision_tower.", "multi_modal_projector.")

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""SmolLM2's ChatML turns with LLaVA's image slot: the image first in the user turn, then a newline."""


@dataclass(frozen=True)
class TowerConfig:
    """Shape of the vision tower (a SigLIP ViT without a pooling head) and of what it hands the language model."""

    image_size: int = 224
    """Side in pixels every image is resized to (Gym Cards renders are 300, BabyAI's point of view 224)."""
    patch_size: int = 16
    """Side of a patch: (image_size / patch_size)^2 image tokens reach the language model (196)."""
    hidden_size: int = 192
    """Width of the tower's transformer."""
    layers: int = 4
    """Transformer layers of the tower."""
    heads: int = 3
    """Attention heads per layer (hidden_size must divide by it)."""
    intermediate_size: int = 768
    """Width of each layer's MLP."""

    def __post_init__(self) -> None:
        check_fields(self, "tower.")
        positive = (lambda v: v >= 1, ">= 1")
        require(self, "tower.", dict.fromkeys(("image_size", "patch_size", "hidden_size", "layers", "heads"), positive))
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"tower.image_size ({self.image_size}) must be a multiple of tower.patch_size ({self.patch_size})."
            )
        if self.hidden_size % self.heads:
            raise ConfigError(
                f"tower.hidden_size ({self.hidden_size}) must be a multiple of tower.heads ({self.heads})."
            )

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def siglip(self):
        from transformers import SiglipVisionConfig

        return SiglipVisionConfig(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            image_size=self.image_size,
            patch_size=self.patch_size,
            vision_use_head=False,  # LLaVA reads the patch states; the pooling head would be dead weight
        )


def make_processor(tokenizer, tower: TowerConfig):
    """A ``LlavaProcessor`` for `tokenizer` (which gets ``<image>`` if it lacks it): SigLIP's image processing
    (bicubic resize to a square, scaled to [-1, 1]) and :data:`CHAT_TEMPLATE`."""
    from transformers import LlavaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    images = SiglipImageProcessorPil(size={"height": tower.image_size, "width": tower.image_size})
    return LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=tower.patch_size,
        vision_feature_select_strategy="full",
        chat_template=CHAT_TEMPLATE,
        num_additional_image_tokens=0,
    )


def assemble(
    lm: nn.Module, tokenizer, tower: TowerConfig, vision_state: dict[str, torch.Tensor] | None = None, seed: int = 0
):
    """``(LlavaForConditionalGeneration, LlavaProcessor)`` around the causal LM `lm` (its modules are reused, not
    copied; its embedding grows by the ``<image>`` row). The tower and projector get `vision_state`
    (:func:`vision_state_dict`'s keys) or, without one, a fresh initialisation from `seed`."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    from transformers.models.llava.modeling_llava import LlavaMultiModalProjector
    from transformers.models.siglip.modeling_siglip import SiglipVisionModel

    processor = make_processor(tokenizer, tower)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if lm.get_input_embeddings().num_embeddings <= image_id:
        old = lm.get_input_embeddings().weight
        rows, mean = old.shape[0], old.detach().float().mean(0)
        lm.resize_token_embeddings(image_id + 1, mean_resizing=False)
        with torch.no_grad():
            lm.get_input_embeddings().weight[rows:] = mean.to(old.dtype)
    dtype = lm.get_input_embeddings().weight.dtype
    device = lm.get_input_embeddings().weight.device
    config = LlavaConfig(
        vision_config=tower.siglip().to_dict(),
        text_config=lm.config.to_dict(),
        image_token_index=image_id,
        image_seq_length=tower.image_tokens,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", True)),
    )
    with torch.device("meta"):
        vlm = LlavaForConditionalGeneration(config)
    vlm.model.language_model = lm.model
    vlm.lm_head = lm.lm_head
    torch.manual_seed(seed)
    vlm.model.vision_tower = SiglipVisionModel(config.vision_config)
    vlm.model.multi_modal_projector = LlavaMultiModalProjector(config)
    if vision_state is not None:
        load_vision_state(vlm, vision_state)
    vlm.model.vision_tower.to(device=device, dtype=dtype)
    vlm.model.multi_modal_projector.to(device=device, dtype=dtype)
    vlm.generation_config = lm.generation_config
    return vlm.eval(), processor


def image_embeddings(vlm: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, image_tokens, d): what the language model receives in place of each image's ``<image>`` tokens, computed
    by the model's own ``get_image_features`` (the tower's selected layer, then the projector)."""
    feats = vlm.model.get_image_features(
        pixel_values=pixel_values,
        vision_feature_layer=vlm.config.vision_feature_layer,
        vision_feature_select_strategy=vlm.config.vision_feature_select_strategy,
    ).pooler_output
    return torch.stack(list(feats))


def vision_modules(vlm: nn.Module) -> dict[str, nn.Module]:
    """The trained part: ``{"vision_tower": ..., "multi_modal_projector": ...}``."""
    return {"vision_tower": vlm.model.vision_tower, "multi_modal_projector": vlm.model.multi_modal_projector}


def train_only_vision(vlm: nn.Module) -> list[nn.Parameter]:
    """Freeze every parameter of `vlm` but the tower's and projector's (LLaVA's first stage) and return those."""
    for p in vlm.parameters():
        p.requires_grad_(False)
    params = [p for m in vision_modules(vlm).values() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    return params


def vision_state_dict(vlm: nn.Module) -> dict[str, torch.Tensor]:
    """The tower's and projector's weights, keyed ``vision_tower.*`` / ``multi_modal_projector.*``."""
    return {f"{name}.{k}": v for name, mod in vision_modules(vlm).items() for k, v in mod.state_dict().items()}


def load_vision_state(vlm: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load :func:`vision_state_dict`'s keys into `vlm`; a missing or unexpected key is an error naming it."""
    for name, mod in vision_modules(vlm).items():
        part = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        mod.load_state_dict(part, strict=True)
    unknown = [k for k in state if not k.startswith(VISION_PREFIXES)]
    if unknown:
        raise ValueError(f"vision weights hold keys no embedded VLM has: {unknown[:3]}")


def save_vision(
    vlm: nn.Module,
    tower: TowerConfig,
    folder: str | os.PathLike,
    info: dict | None = None,
    log: list[dict] | None = None,
) -> Path:
    """Write ``tower.json`` (the tower's shape and `info`: how it was built and how well it reads),
    ``vision.safetensors`` (float16) and, given the build's `log` (:func:`vlmq_core.sight.compact_log`'s rows),
    ``build_log.json``, each atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in vision_state_dict(vlm).items()}
    tmp = folder / ".vision.safetensors.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, folder / "vision.safetensors")
    files = {"tower.json": json.dumps({"tower": asdict(tower), "info": info or {}}, indent=1)}
    if log is not None:  # a row a line
        files[BUILD_LOG] = "[\n" + ",\n".join(json.dumps(row) for row in log) + "\n]"
    for name, text in files.items():
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text + "\n")
        os.replace(tmp, folder / name)
    return folder


def read_vision(folder: str | os.PathLike = WEIGHTS) -> tuple[TowerConfig, dict[str, torch.Tensor], dict]:
    """``(tower, state, info)`` from a folder :func:`save_vision` wrote."""
    folder = Path(folder)
    meta = json.loads((folder / "tower.json").read_text())
    return TowerConfig(**meta["tower"]), load_file(str(folder / "vision.safetensors")), meta.get("info", {})


def read_build_log(folder: str | os.PathLike = WEIGHTS) -> list[dict]:
    """The build's log that :func:`save_vision` stored with the weights (its curves and held-out checks), or a
    sentence naming what is missing."""
    path = Path(folder) / BUILD_LOG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: weights saved without their build's log (save_vision(log=...)).")
    return json.loads(path.read_text())
