"""BabyAI-Text style description of a minigrid agent's partial view (GLAM, Carta et al. 2023).

Built on minigrid's own view grid (`gen_obs_grid()`): the agent stands at the bottom centre of a
``agent_view_size`` x ``agent_view_size`` grid, facing up; cells hidden behind walls or closed doors are
masked out. Sentences follow BabyAI-Text's wording and order:

1. ``You carry a blue key`` (only when carrying something);
2. the nearest cell straight ahead, left and right, when it is a wall with only empty cells in between:
   ``You see a wall 3 steps forward``, ``You see a wall 1 step left``;
3. every other visible non-empty cell, column by column from the left, far to near:
   ``You see a red ball 1 step left and 2 steps forward``, ``You see a locked yellow door 4 steps forward``,
   ``You see a grey box 2 steps right``.

Choice (BabyAI-Text has a bug here): open doors read "an open ... door" (BabyAI-Text always wrote "a").
"""

from __future__ import annotations

from minigrid.minigrid_env import MiniGridEnv


def _steps(n: int, direction: str) -> str:
    """``"1 step left"``, ``"3 steps forward"``."""
    return f"{n} step{'s' if n > 1 else ''} {direction}"


def _object_name(obj) -> str:
    """``"a red ball"``, ``"a closed blue door"``, ``"an open green door"``."""
    if obj.type != "door":
        return f"a {obj.color} {obj.type}"
    if obj.is_open:
        return f"an open {obj.color} door"
    return f"a {'locked' if obj.is_locked else 'closed'} {obj.color} door"


def _offset(dx: int, dy: int) -> str:
    """Position of a cell `dx` cells right (negative: left) and `dy` cells ahead of the agent, in words."""
    side = _steps(abs(dx), "right" if dx > 0 else "left")
    if dx == 0:
        return _steps(dy, "forward")
    if dy == 0:
        return side
    return f"{side} and {_steps(dy, 'forward')}"


def describe_view(env: MiniGridEnv) -> list[str]:
    """The BabyAI-Text sentences for what the agent of the (unwrapped) minigrid `env` sees and carries.

    See the module docstring for the wording, e.g. ``["You see a wall 2 steps forward",
    "You see a red ball 1 step left and 1 step forward"]``.
    """
    grid, visible = env.gen_obs_grid()  # view grid (W, H): agent at (W // 2, H - 1), facing -y
    ax, ay = grid.width // 2, grid.height - 1
    sentences = []
    if env.carrying is not None:
        sentences.append(f"You carry {_object_name(env.carrying)}")

    def first_cell(cells) -> tuple[int, int] | None:
        """The first visible non-empty cell along `cells`; None when an unseen cell or the view edge comes first."""
        for i, j in cells:
            if not visible[i, j]:
                return None
            if grid.get(i, j) is not None:
                return i, j
        return None

    rays = {
        "forward": ((ax, j) for j in range(ay - 1, -1, -1)),
        "left": ((i, ay) for i in range(ax - 1, -1, -1)),
        "right": ((i, ay) for i in range(ax + 1, grid.width)),
    }
    for direction, cells in rays.items():
        hit = first_cell(cells)
        if hit is not None and grid.get(*hit).type == "wall":
            distance = abs(hit[0] - ax) + abs(hit[1] - ay)
            sentences.append(f"You see a wall {_steps(distance, direction)}")

    for i in range(grid.width):
        for j in range(grid.height):
            obj = grid.get(i, j)
            if (i, j) == (ax, ay) or not visible[i, j] or obj is None or obj.type == "wall":
                continue
            sentences.append(f"You see {_object_name(obj)} {_offset(i - ax, ay - j)}")
    return sentences


def view_text(env: MiniGridEnv) -> str:
    """The observation text: ``Mission: <mission>`` then one :func:`describe_view` sentence per line."""
    return "\n".join([f"Mission: {env.mission}", *describe_view(env)])
