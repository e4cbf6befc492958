"""Renders of vlmq's environments paired with what they show: the data the embedded VLM's vision learns from,
and the reading test it is scored on.

A :class:`Reading` is one state of one task: a seeded reset followed by a few moves (the task's oracle or a random
valid action, chosen by the seed), its render, its *caption* (the state summary the text-only model reads, less
what the picture does not show: BabyAI's mission is an instruction, not part of the view), the *fields* a reader
must get exactly (parsed from the caption) and short question/answer pairs about them. Renders are exact and
cheap (a few milliseconds), so the data is unlimited and its labels free; :data:`TRAIN_SEED` and
:data:`HELD_OUT_SEED` keep training and scoring on disjoint seeds.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image, ImageDraw

from vlmq_core.envs import get_task, make_env
from vlmq_core.envs.cards import font
from vlmq_core.envs.oracles import oracle_reply

GYM_CARDS = ("NumberLine", "Blackjack", "EZPoints", "Points24")
BABYAI = ("BabyAI-GoToRedBall", "BabyAI-GoToObj", "BabyAI-GoToLocal", "BabyAI-PickupLoc", "BabyAI-PutNextLocal")
"""BabyAI levels whose renders the reader learns (one room each; GoTo's nine-room maze has the same objects)."""
TASKS = GYM_CARDS + BABYAI
ENV_KWARGS = {task: {"view": "pov"} for task in BABYAI}
"""BabyAI is read from the agent's point of view: the 7x7 cells its text describes, the agent at the bottom centre."""
TRAIN_SEED = 1_000_000
"""First env seed of training renders (collection and evaluation seeds stay far below)."""
HELD_OUT_SEED = 900_000_000
"""First env seed of the held-out renders the reading accuracy is measured on."""
MAX_MOVES = 8
"""A state is reached by 0..MAX_MOVES moves after the reset (fewer when the episode ends first)."""


@dataclass(frozen=True)
class Reading:
    """One render and what it shows."""

    task: str
    seed: int
    image: Image.Image
    caption: str
    """The state summary as the text-only model reads it, without what the picture cannot show."""
    fields: dict[str, str]
    """What a reader must get exactly, e.g. ``{"target": "4", "current": "5"}``."""
    questions: tuple[tuple[str, str], ...]
    """``(question, answer)`` pairs about the fields."""


# The labels' words are matched in any case ((?i:...)): a label is not a field, and a reader that writes
# "your cards:" for "Your cards:" has read the hand; the fields themselves must match exactly.
_NUMBER_LINE = re.compile(r"(?i:Target): (-?\d+)\. (?i:Current): (-?\d+)\.")
_DEALER = re.compile(r"(?i:Dealer (?:shows|has)) ([^.(]+?)(?: \(([^)]*)\))?\.")
_PLAYER = re.compile(r"(?i:Your cards): ([^(]+?) \(([^)]*)\)\.")
_CARDS = re.compile(r"(?i:Cards): ([^.]+)\. (?i:Formula): (.*)$", re.S)
_SEE = re.compile(r"(?i:You see) (a wall|an? \w+ \w+) (.+)$")
_CARRY = re.compile(r"(?i:You carry) (.+)$")


def fields(task: str, caption: str) -> dict[str, str]:
    """The fields of `caption` (a :attr:`Reading.caption` or a model's transcription of one); a field the text
    does not give is missing from the dict, so a reader that garbles it scores wrong on it. The labels ("Your
    cards:", "Formula:", "You see") may be in any case; the fields must match exactly."""
    out: dict[str, str] = {}
    if task == "NumberLine":
        m = _NUMBER_LINE.search(caption)
        if m:
            out = {"target": m[1], "current": m[2]}
    elif task == "Blackjack":
        m = _DEALER.search(caption)
        if m:
            out["dealer"] = m[1].strip()
        m = _PLAYER.search(caption)
        if m:
            out["player"], out["total"] = m[1].strip(), m[2].strip()
        for outcome in ("You win", "You lose", "Draw"):
            if outcome in caption:
                out["outcome"] = outcome
    elif task in ("EZPoints", "Points24"):
        m = _CARDS.search(caption)
        if m:
            out = {"cards": m[1].strip(), "formula": m[2].strip()}
    elif task.startswith("BabyAI-"):
        seen = []
        for line in filter(None, (line.strip() for line in caption.splitlines())):
            m = _SEE.match(line)
            if m:
                seen.append((m[1], m[2]))
            elif m := _CARRY.match(line):
                out["carrying"] = m[1]
            else:  # not a view description: nothing in it is read
                return {}
        out["front"] = next((what for what, where in seen if where == "1 step forward"), "nothing")
        out["objects"] = "; ".join(sorted(f"{what} {where}" for what, where in seen if what != "a wall"))
    else:
        raise ValueError(f"no reading fields for task {task!r}; readable tasks: {', '.join(TASKS)}")
    return out


QUESTIONS = {
    "target": "What is the target number?",
    "current": "What is the current position?",
    "dealer": "Which cards does the dealer show?",
    "player": "Which cards do you hold?",
    "total": "What is your total?",
    "cards": "Which cards are on the table?",
    "formula": "What is the formula so far?",
    "front": "What is right in front of you?",
}
TRANSCRIBE = "Write down the state shown in the image."
"""The question whose answer is the whole caption (the reading test parses the fields from the answer)."""


def questions(task: str, caption: str) -> tuple[tuple[str, str], ...]:
    """``(question, answer)`` pairs: the transcription, then one question per field that has one."""
    pairs = [(TRANSCRIBE, caption)]
    pairs += [(QUESTIONS[k], v) for k, v in fields(task, caption).items() if k in QUESTIONS]
    return tuple(pairs)


def caption_of(task: str, text: str) -> str:
    """The part of a task's state summary its render shows: all of it but what the task's ``unseen`` names
    (BabyAI's ``Mission:`` line)."""
    unseen = get_task(task).unseen
    hidden = unseen(text) if unseen is not None else ""
    return "\n".join(line for line in text.splitlines() if not hidden or line not in hidden.splitlines())


@cache
def _env(task: str):
    return make_env(task, **ENV_KWARGS.get(task, {}))


def reading(task: str, seed: int) -> Reading:
    """The state of `task` that `seed` picks: reset with `seed`, then up to :data:`MAX_MOVES` moves, each the
    task's oracle (when it has one) or a random valid reply with even odds. The same `seed` gives the same state."""
    env = _env(task)
    rng = np.random.default_rng([seed, TASKS.index(task) if task in TASKS else 99])
    obs, _ = env.reset(seed=int(seed))
    oracle = get_task(task).oracle
    for _ in range(int(rng.integers(0, MAX_MOVES + 1))):
        if oracle is not None and rng.random() < 0.5:
            reply = oracle_reply(env, rng)
        else:
            reply = env.random_reply(rng)
        nxt, _, terminated, truncated, _ = env.step(reply)
        obs = nxt
        if terminated or truncated:
            break
    caption = caption_of(task, obs["text"])
    return Reading(task, int(seed), obs["image"], caption, fields(task, caption), questions(task, caption))


def contact_sheet(
    items: Sequence[Reading], said: Sequence[str] | None = None, columns: int = 5, side: int = 200
) -> Image.Image:
    """One picture of `items`: each render at `side` pixels with its caption under it, and when `said` is given
    what a model read from it (green when every field matches, red otherwise). For notebooks: a plain PNG that
    every viewer shows."""
    small = font(10)
    caption_lines, read_lines = 9, 4 if said is not None else 0
    lines = caption_lines + read_lines
    cell_h = side + 13 * lines + 8
    rows = (len(items) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (side + 10) + 10, rows * cell_h + 10), "white")
    draw = ImageDraw.Draw(sheet)
    for k, r in enumerate(items):
        x, y = 10 + (k % columns) * (side + 10), 10 + (k // columns) * cell_h
        sheet.paste(r.image.convert("RGB").resize((side, side)), (x, y))
        text = _wrap(f"{r.task}: {r.caption}", side, small)[:caption_lines]
        draw.multiline_text((x, y + side + 4), "\n".join(text), fill=(40, 40, 40), font=small, spacing=1)
        if said is not None:
            ok = fields(r.task, said[k]) == r.fields
            shown = _wrap(f"read: {said[k]}", side, small)[:read_lines]
            draw.multiline_text(
                (x, y + side + 4 + 13 * caption_lines),
                "\n".join(shown),
                fill=(0, 120, 0) if ok else (190, 0, 0),
                font=small,
                spacing=1,
            )
    return sheet


def _wrap(text: str, width: int, face) -> list[str]:
    """`text` broken into lines no wider than `width` pixels in `face` (newlines kept)."""
    out = []
    for para in text.splitlines() or [""]:
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}".strip()
            if line and face.getlength(trial) > width:
                out.append(line)
                line = word
            else:
                line = trial
        out.append(line)
    return out
