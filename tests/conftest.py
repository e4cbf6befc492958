"""Shared fixtures: tiny random policies (real SmolLM2 tokenizer / SmolVLM processor) and NumberLine turns."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from vlmq_core.envs import make_env
from vlmq_core.model import ModelConfig, Policy, PolicyConfig, load_policy
from vlmq_core.tiny import save_tiny, tiny_embedded_vlm, tiny_idefics3, tiny_llama, tiny_llava
from vlmq_core.turns import Turn, png_bytes

# Tiny models run fastest on one thread; on a shared/oversubscribed CPU, OpenMP threads can be ~100x slower.
torch.set_num_threads(int(os.environ.get("VLMQ_TEST_THREADS", "1")))

REPLIES = ["[action] {a}", "I think the best move is\n[action] {a}", "hmm", "Let me see.\n[action] {a} (moving on)"]
"""Reply templates of different lengths (valid and invalid); ``{a}`` is an action away from the target, so
episodes never end by reaching it (the last turn is marked done by :func:`episode`)."""


def make_policy(family: str, seed: int = 0, cfg: PolicyConfig | None = None) -> Policy:
    """A fresh Policy (LoRA + critic) on a fresh tiny model: ``llama``, ``idefics3``, ``idefics3-split``
    (image splitting on), ``llava`` or ``vlmqvision`` (a tiny ``embedded-vlm``: tiny_llama behind vlmq's tower)."""
    if family == "llama":
        model, tok = tiny_llama(seed)
        return Policy(model, tok, False, cfg or PolicyConfig(), name="tiny-llama")
    if family in ("idefics3", "idefics3-split"):
        model, proc = tiny_idefics3(seed, image_splitting=family == "idefics3-split")
        return Policy(model, proc, True, cfg or PolicyConfig(), name=f"tiny-{family}")
    if family == "llava":
        model, proc = tiny_llava(seed)
        return Policy(model, proc, True, cfg or PolicyConfig(), name="tiny-llava")
    if family == "vlmqvision":
        model, proc = tiny_embedded_vlm(seed)
        return Policy(model, proc, True, cfg or PolicyConfig(), name="tiny-vlmqvision")
    raise ValueError(family)


def randomize_lora(policy: Policy, seed: int = 0, scale: float = 0.05) -> None:
    """Give every LoRA matrix (B starts at zero) random values so adapters change the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in policy.model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * scale)


def episode(n_turns: int = 4, with_image: bool = True, seed: int = 0, last_done: bool = True) -> list[Turn]:
    """``n_turns`` consecutive NumberLine turns with the replies of :data:`REPLIES` (cycled).

    The environment's own rewards are kept; the last turn is marked done (truncated) when ``last_done``.
    """
    env = make_env("NumberLine", seed=seed)
    obs, _ = env.reset()
    turns = []
    for t in range(n_turns):
        inner = env.unwrapped
        away = "-" if inner.target > inner.current else "+"
        reply = REPLIES[t % len(REPLIES)].format(a=away)
        nxt, reward, terminated, truncated, _ = env.step(reply)
        done = bool(terminated or truncated) or (last_done and t == n_turns - 1)
        turns.append(
            Turn(
                episode_id=f"ep{seed}",
                t=t,
                task="vlmq/NumberLine-v0",
                prompt=obs["prompt"],
                image=png_bytes(obs["image"]) if with_image else None,
                reply=reply,
                reward=float(reward),
                done=done,
                truncated=bool(truncated) or (done and not terminated),
                obs=obs["text"],
            )
        )
        if done:
            break
        obs = nxt
    return turns


def transitions(turns: list[Turn]) -> list[tuple[Turn, Turn | None]]:
    """``(turn, next_turn)`` pairs of one episode; terminal turns get None."""
    return [(t, None if t.done else turns[i + 1]) for i, t in enumerate(turns)]


def _shared_policy(family: str):
    """A session-wide tiny policy of one family: tests must not modify it (build their own with make_policy)."""

    @pytest.fixture(scope="session", name=f"{family}_policy")
    def fixture() -> Policy:
        policy = make_policy(family)
        policy.model.eval()
        return policy

    return fixture


llama_policy = _shared_policy("llama")
idefics3_policy = _shared_policy("idefics3")
llava_policy = _shared_policy("llava")
vlmqvision_policy = _shared_policy("vlmqvision")


@pytest.fixture(scope="session")
def text_turns() -> list[Turn]:
    return episode(4, with_image=False, seed=1)


@pytest.fixture(scope="session")
def image_turns() -> list[Turn]:
    return episode(3, with_image=True, seed=2)


@pytest.fixture(scope="session")
def embedded_policy() -> Policy:
    """The real embedded SmolLM2-135M-Instruct policy (~20 s to load): for ``@pytest.mark.slow`` tests only."""
    return load_policy(PolicyConfig(model=ModelConfig(device="cpu")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    """A TurnBuffer of 8 random-action NumberLine episodes (text only), for trainer tests."""
    from vlmq_core.buffer import TurnBuffer
    from vlmq_core.collect import CollectConfig, SourceConfig, collect

    buf = TurnBuffer(tmp_path_factory.mktemp("data"))
    collect(None, CollectConfig(num_envs=4, use_images=False), SourceConfig("random", 8, 0), buf, progress=False)
    return buf


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory):
    """The tiny models saved as hub-style folders (``model.name=<folder>`` loads them like a hub checkpoint)."""
    root = tmp_path_factory.mktemp("tiny")
    return {
        "llama": str(save_tiny(*tiny_llama(), root / "llama")),
        "idefics3": str(save_tiny(*tiny_idefics3(), root / "idefics3")),
        "llava": str(save_tiny(*tiny_llava(), root / "llava")),
        "vlmqvision": str(save_tiny(*tiny_embedded_vlm(), root / "vlmqvision")),
    }
