"""The text-action interface: the prompt a model reads, the reply syntax, the parser and the reward wrapper.

A prompt (:func:`format_prompt`) gives the task, the action docs and an example of the syntax; a reply's action
is the text after the tag :data:`ACTION_TAG` (METHOD.md, "Setting"); :class:`TextActionEnv` applies Table 4's
rewards. Model output is untrusted text: it is only parsed, never executed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium
import numpy as np
from PIL import Image

ACTION_TAG = "[action]"
"""The tag after which a reply's action text starts (the one definition; collection prefills it)."""
_TAG_RE = re.compile(re.escape(ACTION_TAG), re.IGNORECASE)
_DECORATION = " \t\r\n`*_#>\"'"
"""Whitespace and markdown decoration stripped around the action text (never ``-`` or ``+``)."""
IMAGE_ONLY = "shown in the image."
"""The prompt's observation line when the text summary is withheld (``TextActionEnv(show_text=False)``)."""
ECHO_CHARS = 40
"""At most this many characters of an invalid reply are quoted back in the error message."""
REFUSAL_CHARS = 160
"""At most this much of the first line of an env's refusal (``info["action_error"]``) goes into the next prompt."""


@dataclass(frozen=True)
class TaskPrompt:
    """Everything but the observation that the model is told about a task."""

    description: str
    """What the task is and what the goal is."""
    actions: list[str]
    """The valid action strings; index i is the inner environment's action i."""
    action_doc: str
    """Text documenting each action, one per line."""
    example: str
    """An example reply showing the syntax, e.g. ``[action] +``."""


def format_prompt(task: TaskPrompt, observation: str, error: str | None = None) -> str:
    """The full user prompt: description, action docs, reply format + example, then the observation.

    With `error`, the observation part starts with "Your previous reply was invalid: <error>".
    """
    lines = [
        task.description,
        "Actions:",
        task.action_doc,
        f"Reply with `{ACTION_TAG}` followed by exactly one action. Example:",
        task.example,
    ]
    if error is not None:
        lines.append(f"Your previous reply was invalid: {error}")
    lines.append(f"Observation: {observation}")
    return "\n".join(lines)


def after_tag(reply: str) -> str | None:
    """The raw text after the first ``[action]`` tag (case-insensitive), or None when the reply has no tag."""
    match = _TAG_RE.search(reply)
    return None if match is None else reply[match.end() :]


def shorten(text: str) -> str:
    """`text` cut to :data:`ECHO_CHARS` characters (with ``...``), for quoting a reply back."""
    return text if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "..."


@dataclass
class TextActionConfig:
    """Reward-wrapper settings (METHOD.md Table 4; defaults are the Gym Cards column)."""

    invalid_reward: float = -2.0
    """Reward for a reply that does not parse to a valid action (the env does not advance)."""
    max_consecutive_invalid: int = 3
    """This many invalid replies in a row end the episode (terminated) with `timeout_reward`."""
    timeout_reward: float = -10.0
    """Reward of the step that hits the consecutive-invalid timeout (replaces `invalid_reward`)."""
    max_steps: int = 10
    """Wrapper steps (valid or not) after which the episode is truncated (no extra reward)."""


def _action_text(reply: str) -> str | None:
    """The reply text after the first ``[action]`` tag, stripped of markdown; None without a tag.

    An optional ``:`` right after the tag (possibly after closing ``**``/``__`` or whitespace) is dropped.
    """
    rest = after_tag(reply)
    if rest is None:
        return None
    return rest.lstrip(_DECORATION).removeprefix(":").strip(_DECORATION)


def parse_action(reply: str, actions: Sequence[str]) -> int | None:
    """Index in `actions` of the reply's action, or None when the reply is invalid.

    Takes the text after the first ``[action]`` tag (case-insensitive), strips whitespace and markdown
    decoration (backticks, ``**``, ``__``, ``#``, ``>``, quotes) and matches it exactly against `actions`.
    "[action] +" -> index of "+"; "**[action]:** `-`" -> index of "-"; "[action] + because" -> None.
    """
    text = _action_text(reply)
    if text is None or text not in actions:
        return None
    return list(actions).index(text)


FAILURE_KINDS = ("no [action] tag", "nothing after the tag", "an action, then more text", "not a valid action")
"""How a reply can fail the syntax, from the first check it fails (:func:`failure_kind`)."""


def failure_kind(reply: str, actions: Sequence[str]) -> str:
    """Which of :data:`FAILURE_KINDS` an invalid reply is: no tag; a tag with nothing after it; a valid action
    followed by more text (``[action] + because ...``, the commonest near miss); anything else after the tag."""
    text = _action_text(reply)
    if text is None:
        return FAILURE_KINDS[0]
    if not text:
        return FAILURE_KINDS[1]
    if any(text.startswith(a) and text[len(a) :].strip(_DECORATION) for a in actions):
        return FAILURE_KINDS[2]
    return FAILURE_KINDS[3]


def invalid_reason(reply: str, actions: Sequence[str]) -> str:
    """A short description of why `reply` is not a valid action (for the next prompt's error line)."""
    text = _action_text(reply)
    if text is None:
        return f"no `{ACTION_TAG}` tag found."
    if not text:
        return f"no action after `{ACTION_TAG}`."
    return f"{shorten(text)!r} is not one of {', '.join(actions)}."


class TextActionEnv(gymnasium.Wrapper):
    """Wraps a Discrete-action env so that `step` takes the model's reply text (METHOD.md, Table 4).

    Observations are dicts ``{"text": summary, "image": PIL RGB image, "prompt": full user prompt}``.
    A valid reply steps the inner env and resets the consecutive-invalid counter. An invalid reply leaves
    the inner env where it is, gives `invalid_reward`, and the next prompt names the problem and the
    expected syntax; the `max_consecutive_invalid`-th invalid reply in a row terminates the episode with
    `timeout_reward` instead. After `max_steps` wrapper steps (valid or not) the episode is truncated.
    Choice: the timeout reward applies only to the consecutive-invalid timeout; the total-step limit just
    truncates (no extra reward). `info` holds ``valid``, ``action`` (int or None), ``state`` (inner info),
    ``error`` (str or None) and ``success`` (the inner env terminated with a positive reward).
    The inherited `action_space` is the inner env's; the wrapper's actions are the strings `valid_actions`.
    A reply that parses but that the inner env refuses (its step's info has ``action_error``: a web page without
    that element) counts as invalid too, with the refusal in the next prompt; an inner env that reports
    ``browser_crash`` truncates the episode (its info says so in ``state``).
    """

    def __init__(
        self,
        env: gymnasium.Env,
        prompt: TaskPrompt,
        config: TextActionConfig | None = None,
        *,
        text_fn: Callable[[gymnasium.Env], str],
        parser: Callable[[str, Sequence[str]], Any] = parse_action,
        reason_fn: Callable[[str, Sequence[str]], str] = invalid_reason,
        random_fn: Callable[[gymnasium.Env, np.random.Generator], str] | None = None,
        show_text: bool = True,
        unseen_fn: Callable[[str], str] | None = None,
    ):
        """Wrap `env`; `text_fn(env)` returns the current state summary text (the observation o_t).

        `parser(reply, actions)` maps a reply to the inner env's action or None (default: the index of an exact
        match after the ``[action]`` tag); `reason_fn(reply, actions)` explains an invalid reply in the next
        prompt; `random_fn(env, rng)` writes a random valid action for states whose actions vary (web pages). With
        `show_text` false the prompt withholds the summary (:data:`IMAGE_ONLY`): a VLM sees the state in the
        image alone (the paper's image-only prompting, Figures 4 and 8); ``obs["text"]`` still holds it.
        `unseen_fn(summary)` gives what the image cannot show (a mission), which the image-only prompt keeps.
        """
        super().__init__(env)
        self.parser = parser
        self.reason_fn = reason_fn
        self.random_fn = random_fn
        self.prompt = prompt
        self.config = config if config is not None else TextActionConfig()
        self.text_fn = text_fn
        self.show_text = show_text
        self.unseen_fn = unseen_fn
        self._steps = 0
        self._invalid_streak = 0
        self._frame: np.ndarray | None = None
        self._state: dict[str, Any] = {}
        self._done = True

    @property
    def valid_actions(self) -> list[str]:
        """The valid action strings (index = inner env action)."""
        return list(self.prompt.actions)

    def random_reply(self, rng: np.random.Generator) -> str:
        """A uniformly random valid action written in the example syntax, e.g. ``[action] +`` (or the task's own
        random action in the current state, ``[action] click("13")``)."""
        if self.random_fn is not None:
            return f"{ACTION_TAG} {self.random_fn(self.env, rng)}"
        action = self.prompt.actions[int(rng.integers(len(self.prompt.actions)))]
        return f"{ACTION_TAG} {action}"

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset the inner env and the counters; returns the first observation dict and info."""
        frame, state = self.env.reset(seed=seed, options=options)
        self._frame = frame
        self._state = dict(state)
        self._steps = 0
        self._invalid_streak = 0
        self._done = False
        info = {"valid": True, "action": None, "state": dict(self._state), "error": None, "success": False}
        return self._observation(None), info

    def step(self, reply: str) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        """Parse `reply` and act on it (see the class docstring for the reward rules)."""
        if self._done:
            raise RuntimeError("episode is over (or never started): call reset() first")
        action = self.parser(reply, self.prompt.actions)
        self._steps += 1
        error: str | None = None
        success = False
        inner_truncated = False
        if action is not None:
            frame, reward, terminated, inner_truncated, state = self.env.step(action)
            self._frame = frame
            self._state = dict(state)
            reward = float(reward)
            success = bool(terminated) and reward > 0
            refused = self._state.get("action_error")
            if refused and not self._state.get("browser_crash"):  # parsed, but the env could not act on it
                action, reward = None, reward + self._invalid(terminated)
                terminated = terminated or self._invalid_streak >= self.config.max_consecutive_invalid
                reason = refused.splitlines()[0][:REFUSAL_CHARS]
                error = f"the page refused it ({reason}). Expected e.g. `{self.prompt.example}`."
            else:
                self._invalid_streak = 0
        else:
            reward = self._invalid(False)
            error = f"{self.reason_fn(reply, self.prompt.actions)} Expected e.g. `{self.prompt.example}`."
            terminated = self._invalid_streak >= self.config.max_consecutive_invalid
        terminated = bool(terminated)
        truncated = not terminated and (bool(inner_truncated) or self._steps >= self.config.max_steps)
        self._done = terminated or truncated
        info = {
            "valid": action is not None,
            "action": action,
            "state": dict(self._state),
            "error": error,
            "success": success,
        }
        return self._observation(error), reward, terminated, truncated, info

    def _invalid(self, terminated: bool) -> float:
        """Count one more invalid reply; its reward: `invalid_reward`, or `timeout_reward` when this one ends the
        episode (nothing when the inner env ended it anyway)."""
        self._invalid_streak += 1
        if terminated:
            return 0.0
        timeout = self._invalid_streak >= self.config.max_consecutive_invalid
        return self.config.timeout_reward if timeout else self.config.invalid_reward

    def _observation(self, error: str | None) -> dict[str, Any]:
        """The observation dict for the current inner state, with `error` shown in the prompt."""
        text = self.text_fn(self.env)
        image = Image.fromarray(np.asarray(self._frame, dtype=np.uint8)).convert("RGB")
        if self.show_text:
            shown = text
        else:
            unseen = self.unseen_fn(text) if self.unseen_fn is not None else ""
            shown = f"{unseen}\nThe rest is {IMAGE_ONLY}" if unseen else IMAGE_ONLY
        return {"text": text, "image": image, "prompt": format_prompt(self.prompt, shown, error)}
