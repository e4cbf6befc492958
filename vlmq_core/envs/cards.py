"""Playing cards shared by the Gym Cards tasks: the infinite deck and cached PIL drawings of cards.

Cards are drawn with replacement (an infinite deck, as in RL4VLM's gym_cards and gymnasium's Blackjack):
rank uniform in 1..13 (1 = ace, 11..13 = J, Q, K), suit uniform. Text names the ten ``10`` everywhere
(never ``T``) so that it matches the action token ``10``.

Drawing uses DejaVu Sans from matplotlib's data directory (it has the ♠♥♦♣ glyphs), so pictures are
identical on every machine with the same matplotlib. Card faces, card backs and fonts are cached: a
frame is a table background plus a few pastes and one or two lines of text.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 300
"""Width and height of every Gym Cards observation in pixels."""
TABLE_COLOUR = (53, 101, 77)
"""Green card-table background."""
TEXT_COLOUR = (255, 255, 255)
SUITS = ("S", "H", "D", "C")
"""Suit letters: spades, hearts, diamonds, clubs."""
SUIT_SYMBOLS = {"S": "♠", "H": "♥", "D": "♦", "C": "♣"}
_RED = (200, 30, 45)
_BLACK = (20, 20, 20)
_RANK_LABELS = {1: "A", 11: "J", 12: "Q", 13: "K"}
FONT_PATH = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
"""The TrueType font every Gym Cards picture uses (DejaVu Sans, shipped with matplotlib)."""


@dataclass(frozen=True)
class Card:
    """A playing card: `rank` 1..13 (1 = ace, 11/12/13 = J/Q/K) and `suit` one of ``S H D C``."""

    rank: int
    suit: str

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 13 or self.suit not in SUITS:
            raise ValueError(f"invalid card rank={self.rank!r} suit={self.suit!r}; rank 1..13, suit in {SUITS}")

    @property
    def value(self) -> int:
        """Points of the card with J, Q, K counting 10 and the ace 1."""
        return min(self.rank, 10)

    @property
    def label(self) -> str:
        """The rank as text: ``A``, ``2`` .. ``10``, ``J``, ``Q``, ``K``."""
        return _RANK_LABELS.get(self.rank, str(self.rank))

    @property
    def code(self) -> str:
        """Label and suit letter, e.g. ``"10H"`` or ``"QS"`` (used in `info` dicts)."""
        return self.label + self.suit

    @property
    def red(self) -> bool:
        """Hearts and diamonds are red."""
        return self.suit in ("H", "D")


def draw_card(rng: np.random.Generator) -> Card:
    """One card from the infinite deck, using only `rng` (the env's ``np_random``)."""
    rank = int(rng.integers(1, 14))
    return Card(rank, SUITS[int(rng.integers(len(SUITS)))])


# ---------------------------------------------------------------- drawing


@cache
def font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans at `size` pixels (cached)."""
    return ImageFont.truetype(str(FONT_PATH), size)


@cache
def _table() -> Image.Image:
    return Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), TABLE_COLOUR)


def table() -> Image.Image:
    """A fresh 300x300 RGB card-table background to draw a frame on."""
    return _table().copy()


def _blank(width: int, height: int, fill: tuple[int, int, int], outline: tuple[int, int, int]) -> Image.Image:
    """A rounded card outline on the table colour (so pasting needs no mask)."""
    image = Image.new("RGB", (width, height), TABLE_COLOUR)
    radius = max(3, width // 10)
    ImageDraw.Draw(image).rounded_rectangle(
        [(0, 0), (width - 1, height - 1)], radius=radius, fill=fill, outline=outline, width=2
    )
    return image


@cache
def card_face(card: Card, width: int, height: int) -> Image.Image:
    """The face of `card` at ``width x height`` pixels (cached; do not draw on the result).

    Rank and suit symbol in the top-left and bottom-right corners; a large suit symbol in the middle
    (the large letter for J, Q, K); red for hearts and diamonds, black otherwise.
    """
    image = _blank(width, height, (250, 250, 245), (90, 90, 90))
    draw = ImageDraw.Draw(image)
    colour = _RED if card.red else _BLACK
    symbol = SUIT_SYMBOLS[card.suit]
    corner = font(max(8, height // 6))
    small = font(max(7, height // 8))
    pad = max(3, width // 14)
    draw.text((pad, pad), card.label, fill=colour, font=corner, anchor="lt")
    draw.text((pad, pad + corner.size + 1), symbol, fill=colour, font=small, anchor="lt")
    draw.text((width - pad, height - pad), card.label, fill=colour, font=corner, anchor="rb")
    draw.text((width - pad, height - pad - corner.size - 1), symbol, fill=colour, font=small, anchor="rb")
    middle = card.label if card.rank > 10 else symbol
    draw.text((width // 2, height // 2), middle, fill=colour, font=font(max(10, height * 2 // 5)), anchor="mm")
    return image


@cache
def card_back(width: int, height: int) -> Image.Image:
    """A face-down card at ``width x height`` pixels: a blue diamond lattice in a white frame (cached)."""
    image = _blank(width, height, (255, 255, 255), (90, 90, 90))
    inset = max(4, width // 10)
    inner = Image.new("RGB", (width - 2 * inset, height - 2 * inset), (40, 70, 160))
    draw = ImageDraw.Draw(inner)
    step = max(6, width // 6)
    for offset in range(-inner.height, inner.width + inner.height, step):
        draw.line([(offset, 0), (offset + inner.height, inner.height)], fill=(120, 150, 220), width=1)
        draw.line([(offset, 0), (offset - inner.height, inner.height)], fill=(120, 150, 220), width=1)
    image.paste(inner, (inset, inset))
    return image


def paste_row(canvas: Image.Image, cards: list[Image.Image], x: int, y: int, max_width: int, gap: int = 6) -> None:
    """Paste card images left to right from ``(x, y)``; they overlap when they would not fit in `max_width`."""
    if not cards:
        return
    width = cards[0].width
    step = width + gap
    if len(cards) > 1 and (len(cards) - 1) * step + width > max_width:
        step = (max_width - width) // (len(cards) - 1)
    for i, image in enumerate(cards):
        canvas.paste(image, (x + i * step, y))


def text_lines(text: str, size: int, max_width: int) -> list[str]:
    """Split `text` at spaces into lines no wider than `max_width` pixels at font `size`."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        trial = f"{current} {word}" if current else word
        if current and font(size).getlength(trial) > max_width:
            lines.append(current)
            current = word
        else:
            current = trial
    lines.append(current)
    return lines


def to_array(image: Image.Image) -> np.ndarray:
    """The frame as a fresh, writable (300, 300, 3) uint8 array."""
    return np.array(image, dtype=np.uint8)
