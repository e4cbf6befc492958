"""Turn-based transitions: what an environment step leaves behind, kept as text and PNG bytes.

A dataset never stores token ids, so one dataset trains any model (METHOD.md, "Setting").
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from PIL import Image


@dataclass
class Turn:
    """One turn t of an episode: the model saw `prompt` (+ `image`) and replied `reply`."""

    episode_id: str
    """Unique id of the episode this turn belongs to."""
    t: int
    """Turn index inside the episode, starting at 0."""
    task: str
    """Environment id, e.g. ``vlmq/NumberLine-v0``."""
    prompt: str
    """p_t: the full user prompt text (task description, action docs, example, observation)."""
    image: bytes | None = field(repr=False)
    """i_t as PNG bytes, or None for text-only tasks."""
    reply: str
    """a_t: the complete reply text, including any prefilled prefix such as ``[action]``."""
    reward: float
    """r_t, as given by the text-action wrapper (penalties included)."""
    done: bool
    """The episode ended at this turn (terminated or truncated)."""
    truncated: bool = False
    """The episode ended by a step limit rather than by the task itself."""
    source: str = ""
    """Who wrote the reply: ``random`` or a model name."""
    strategy: str = "agent"
    """Action prompting used: ``agent``, ``min_format``, ``random``."""
    valid: bool = True
    """The reply parsed to a valid environment action."""
    obs: str = ""
    """o_t: the raw observation text (the prompt is built from it)."""
    info: str = "{}"
    """JSON of the environment state before the step (for inspection only)."""
    seed: int | None = None
    """The seed its episode was reset with (``env.reset(seed=...)``); None when unknown."""

    def pil_image(self) -> Image.Image | None:
        """Decode `image` to a PIL RGB image (None when the turn has no image)."""
        return None if self.image is None else self.decode_image(self.image)

    @staticmethod
    def decode_image(data: bytes) -> Image.Image:
        """PNG bytes (a turn's `image`) -> PIL RGB image."""
        return Image.open(io.BytesIO(data)).convert("RGB")


Transition = tuple[Turn, Turn | None]
"""A turn and the next turn of its episode (None when the turn ends the episode): what a TD target needs."""


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG bytes (the on-disk image format of every dataset)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
