"""Throughput of an update and of replies: vlmq against a plain transformers + peft LoRA step on the same tokens.

One run, every number measured in it (compare ratios, not numbers from other machines). Per model and minibatch
size (turns of NumberLine, random valid replies, no dataset or hub needed):

- ``plain LoRA eager``: peft LoRA (r 8, alpha 16, every linear layer of the decoder, peft's defaults) on a copy of
  the same model, ``model(input_ids, attention_mask, labels)`` with the loss on the reply tokens, backward, fused
  AdamW: what a transformers user writes. ``plain LoRA compiled``: the same step under ``torch.compile``
  (``reduce-overhead``, i.e. CUDA graphs, on CUDA), with ``--compile`` or on CUDA.
- ``vlmq sft|afsft paper``: ``Trainer.train_step`` with ``configs/numberline_{sft,afsft}.yaml`` and LoRA on every
  layer (``lora.layers=null``, the paper's); ``vlmq sft|afsft``: the configs as shipped (their ``lora.layers`` and
  the frozen-layer cache); ``vlmq afsft compiled``: with ``train.compile`` (``reduce-overhead`` on CUDA, ``default``
  on a CPU), with ``--compile`` or on CUDA. Every arm sees the same minibatches; a first pass over them (cache misses,
  compilation) is timed apart as ``first pass`` and not in the steady numbers. Every arm's model is in the configs'
  ``model.dtype`` (bfloat16: on a CPU, the plain step's base weights too).
- Columns: median ms per update, updates/s, tokens/s (the turns' real prompt and reply tokens per second), kernel
  launches per update and GPU busy fraction (CUDA, torch profiler; on a CPU the profiler's operator count), peak
  memory (CUDA allocator; on a CPU the process's peak RSS so far), and each arm's time over the plain eager step.
- Replies: 32 NumberLine prompts, greedy, 24 new tokens at most, with ``Policy.generate`` as configured
  (``model.generate: auto``) and, with ``--compile`` or on CUDA, with a static cache and a compiled decode step
  (``model.generate=static``): milliseconds and new tokens/s.

Models: ``embedded`` (the GGUF), ``135m`` and ``1.7b`` (SmolLM2-135M / 1.7B shapes with random weights, built from a
config: no download), ``tiny`` (a 2-layer model, for ``--dry-run`` checks). Run:
``python benchmarks/bench_throughput.py [--device cpu|cuda|auto] [--quick] [--models embedded,1.7b]
[--turns 8,32,128] [--repeats 8] [--compile] [--json out.json]``. ``--quick``: the embedded model at 8 turns,
3 repeats, no compiled arm (2 CPU cores: about 2 minutes).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from vlmq_core import hardware
from vlmq_core.buffer import TurnBuffer
from vlmq_core.collect import CollectConfig, SourceConfig, collect
from vlmq_core.model import Policy, PolicyConfig, load_backbone, resolve_device
from vlmq_core.run import load_config
from vlmq_core.tokens import build_batch
from vlmq_core.trainer import Trainer
from vlmq_core.turns import Transition

PAPER = ["lora.layers=null", "train.layer_cache_gb=0"]
"""Overrides that make a shipped config the paper's update: LoRA on every layer, nothing cached."""

SHAPES = {
    "135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "rope_theta": 100000.0},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "rope_theta": 130000.0},
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
             "num_key_value_heads": 4},
}  # fmt: skip
"""SmolLM2 shapes (HuggingFaceTB/SmolLM2-135M-Instruct and -1.7B-Instruct configs), and a tiny one."""


def build_base(name: str, device: torch.device, dtype: str):
    """``(model, tokenizer, label)``: the embedded GGUF, or a SmolLM2-shaped model with random weights."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from vlmq_core.model import ModelConfig, resolve_dtype
    from vlmq_core.tiny import embedded_tokenizer

    if name == "embedded":
        model, tok, _ = load_backbone(ModelConfig(device=str(device), dtype=dtype))
        return model, tok, "SmolLM2-135M-Instruct (embedded GGUF)"
    tok = embedded_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok), max_position_embeddings=8192, rms_norm_eps=1e-5, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SHAPES[name],
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=resolve_dtype(dtype, device)).to(device).eval()
    return model, tok, f"SmolLM2-{name.upper()} shape, random weights"


def numberline_turns(n: int) -> list[Transition]:
    """At least `n` NumberLine transitions of random valid replies (text only)."""
    with tempfile.TemporaryDirectory() as tmp:
        buffer = TurnBuffer(tmp)
        play = CollectConfig(task="NumberLine", use_images=False)
        collect(None, play, SourceConfig("random", n, 0), buffer, progress=False)
        turns = buffer.turns
    return [(t, None if t.done else turns[i + 1]) for i, t in enumerate(turns)]


class Replay:
    """What ``Trainer`` reads of a buffer, serving fixed minibatches in turn (every arm sees the same ones)."""

    def __init__(self, batches: list[list[Transition]]):
        self.batches, self.i = batches, 0
        self.turns = [t for b in batches for t, _ in b]
        self.version = 0  # its content never changes (TurnBuffer.version)

    def sample(self, n: int, rng) -> list[Transition]:
        batch = self.batches[self.i % len(self.batches)]
        self.i += 1
        return batch

    def __len__(self) -> int:
        return len(self.turns)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def profile_step(step: Callable[[], None], device: torch.device) -> tuple[int, float | None]:
    """(kernel launches, GPU busy fraction) of one step on CUDA; (operators, None) on a CPU."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sync(device)
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        step()
        sync(device)
    wall = time.perf_counter() - t0
    events = prof.events()
    if device.type == "cuda":
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.device_time for e in kernels) / 1e6 / wall
        return len(kernels), busy
    return sum(1 for e in events if e.name.startswith("aten::")), None


def measure(step: Callable[[], None], device: torch.device, warm: int, repeats: int) -> dict:
    """Time `warm` steps (the first pass) then `repeats` steps; profile one more."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(warm):
        step()
    sync(device)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    ops, busy = profile_step(step, device)
    return {"ms": 1000 * statistics.median(times), "first_ms": 1000 * first / max(warm, 1), "ops": ops, "busy": busy}


def plain_arm(base, batches, device: torch.device, compiled: bool) -> Callable[[], None]:
    """The plain peft LoRA step on the same tokens (labels only on reply tokens)."""
    from peft import LoraConfig, get_peft_model

    with warnings.catch_warnings():  # peft asks transformers for a renamed attribute; not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(
            copy.deepcopy(base),
            LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear", bias="none"),
        ).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    data = []
    for b in batches:
        ids = b.inputs["input_ids"]
        labels = torch.full_like(ids, -100).flatten()
        labels[b.pred_pos + 1] = b.tokens
        data.append((ids, b.inputs["attention_mask"], labels.view_as(ids)))

    def fwd_bwd(ids, mask, labels):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach()

    if compiled:
        fwd_bwd = torch.compile(fwd_bwd, mode="reduce-overhead" if device.type == "cuda" else "default")
    state = {"i": 0}

    def step() -> None:
        ids, mask, labels = data[state["i"] % len(data)]
        state["i"] += 1
        fwd_bwd(ids, mask, labels)
        opt.step()
        opt.zero_grad(set_to_none=False)

    return step


def vlmq_arm(base, tok, label: str, config: str, overrides: list[str], batches, device) -> Callable[[], None]:
    cfg = load_config(config, overrides)
    critic = replace(cfg.critic, init_q=-10.0 if cfg.critic.init_q == "min_return_to_go" else cfg.critic.init_q)
    model_cfg = replace(cfg.model, device=str(device))
    torch.manual_seed(0)
    policy = Policy(copy.deepcopy(base), tok, False, PolicyConfig(model_cfg, cfg.lora, critic), name=label)
    trainer = Trainer(policy, Replay(batches), cfg.train, cfg.loss)
    if trainer.whitening_active:
        trainer.calibrate_critic_inputs(progress=False)
    return trainer.train_step


def generate_arm(base, tok, label: str, prompts: list[str], device, overrides: list[str]) -> tuple[Callable, Callable]:
    """Greedy replies to `prompts` with the AFSFT config's policy (and `overrides`); the step and its token count."""
    cfg = load_config("configs/numberline_afsft.yaml", overrides)
    policy = Policy(copy.deepcopy(base), tok, False, PolicyConfig(replace(cfg.model, device=str(device)), cfg.lora))
    out = {}

    def step() -> None:
        out["replies"] = policy.generate(prompts, [None] * len(prompts), max_new_tokens=24, temperature=0.0)

    def new_tokens() -> int:
        return sum(min(24, len(tok(r, add_special_tokens=False).input_ids) + 1) for r in out["replies"])

    return step, new_tokens


def row(name: str, m: dict, tokens: int, plain: float | None) -> str:
    busy = "" if m["busy"] is None else f"{100 * m['busy']:.0f}%"
    ratio = f"x{m['ms'] / plain:.2f}" if plain else ""
    return (
        f"{name:<24} {m['ms']:9.1f} {m['first_ms']:10.1f} {1000 / m['ms']:9.2f} {tokens * 1000 / m['ms']:10.0f} "
        f"{m['ops']:7d} {busy:>6} {m['peak_mb']:9.0f} {ratio:>8}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default="embedded,1.7b")
    ap.add_argument("--turns", default="8,32,128")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="embedded model, 8 turns, 3 repeats, no compiled arm")
    ap.add_argument("--compile", action="store_true", help="also the compiled arms (always on CUDA)")
    ap.add_argument("--dtype", help="model dtype (default: configs/numberline_afsft.yaml's model.dtype)")
    ap.add_argument("--json", help="also write every figure to this file")
    args = ap.parse_args()
    device = resolve_device(args.device)
    models, turns_list, repeats = args.models.split(","), [int(t) for t in args.turns.split(",")], args.repeats
    if args.quick:
        models, turns_list, repeats = ["embedded"], [8], 3
    compiled = args.compile or device.type == "cuda"
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    dtype = args.dtype or load_config("configs/numberline_afsft.yaml").model.dtype
    print(f"{hardware.describe()}; device {device}; model.dtype {dtype} (configs/numberline_afsft.yaml)")
    transitions = numberline_turns(max(turns_list) * 2)
    rng = np.random.default_rng(0)
    results = []
    for model_name in models:
        base, tok, label = build_base(model_name, device, dtype)
        for n in turns_list:
            picks = [[transitions[i] for i in rng.choice(len(transitions), n, replace=False)] for _ in range(4)]
            probe = Policy(copy.deepcopy(base), tok, False, PolicyConfig())
            token_batches = [build_batch(probe, b) for b in picks]
            del probe
            tokens = int(np.mean([int(b.inputs["attention_mask"].sum()) for b in token_batches]))
            arms: list[tuple[str, str, object]] = [("plain LoRA eager", "plain", False)]
            if compiled:
                arms.append(("plain LoRA compiled", "plain", True))
            for actor in ("sft", "afsft"):
                cfg = f"configs/numberline_{actor}.yaml"
                arms += [(f"vlmq {actor} paper", cfg, PAPER), (f"vlmq {actor}", cfg, [])]
            if compiled:
                arms.append(("vlmq afsft compiled", "configs/numberline_afsft.yaml", [f"train.compile={mode}"]))
            print(f"\n{label} on {device}, {n} turns a minibatch ({tokens} prompt and reply tokens)")
            ops = "ops" if device.type == "cpu" else "launches"
            print(
                f"{'arm':<24} {'ms/update':>9} {'first pass':>10} {'updates/s':>9} {'tokens/s':>10} {ops:>7} "
                f"{'busy':>6} {'peak MB':>9} {'x plain':>8}"
            )
            plain = None
            for name, kind, option in arms:
                if kind == "plain":
                    step = plain_arm(base, token_batches, device, option)
                else:
                    step = vlmq_arm(base, tok, label, kind, option, picks, device)
                m = measure(step, device, warm=len(picks), repeats=repeats)
                m["peak_mb"] = peak_mb(device)
                plain = plain or m["ms"]
                print(row(name, m, tokens, plain), flush=True)
                results.append({"model": model_name, "turns": n, "arm": name, "tokens": tokens, **m})
                del step
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
        prompts = [t.prompt for t, _ in transitions[:32]]
        for how in ["auto"] + (["static"] if compiled else []):
            step, new_tokens = generate_arm(base, tok, label, prompts, device, [f"model.generate={how}"])
            m = measure(step, device, warm=1, repeats=max(2, repeats // 2))
            rate = new_tokens() * 1000 / m["ms"]
            print(f"generate 32 replies, model.generate={how} ({label}): {m['ms']:.0f} ms, {rate:.0f} new tokens/s")
            results.append({"model": model_name, "arm": f"generate 32 {how}", "new_tokens": new_tokens(), **m})
        del base
        gc.collect()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"hardware": hardware.describe(), "device": str(device), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
