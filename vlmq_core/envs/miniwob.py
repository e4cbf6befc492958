"""MiniWoB++ through BrowserGym on Debian's Chromium: the paper's 27 "click" tasks behind the text-action wrapper.

Raw envs ``vlmq/MiniWoB-<task>-v0`` (short names ``MiniWoB-<task>``, :data:`MINIWOB_TASKS`) wrap BrowserGym's
``browsergym/miniwob.<task>``:

- observation: the page's screenshot (the frame a VLM sees) and, as text, the goal and the page as BrowserGym's
  accessibility tree (``page="axtree"``, each element with its ``[bid]``) or its pruned HTML (``page="html"``), cut
  to ``max_page_chars`` characters;
- action: exactly one BrowserGym call, the string :func:`~vlmq_core.envs.web_actions.parse_web_action` rebuilt
  from the reply (model text never reaches BrowserGym). The env checks it again before BrowserGym runs it, and
  BrowserGym runs it through its strict, single-action ``bid`` action set;
- reward: MiniWoB's success indicator as BrowserGym gives it (1 on success, else 0). A call the page refuses
  (an element id that is not there, a timeout) sets ``info["action_error"]``: the wrapper counts it as invalid;
- Table 4's MiniWoB column: an invalid reply -2, the fifth in a row ends the episode at -10, 25 steps at most.

The browser: Chromium from Debian, launched by vlmq through Playwright
with flags that keep it offline and quiet (:data:`CHROMIUM_FLAGS`); ``playwright install`` is never needed. Every
Playwright call runs on one background thread (Playwright's sync API refuses to run inside Jupyter's event loop),
browsers close on every exit path (``close()``, garbage collection, interpreter exit; Playwright's driver closes
them when the process is killed), and a browser that dies mid-episode ends that episode with
``info["browser_crash"]``; the next ``reset`` starts a new one.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import os
import queue
import re
import shutil
import signal
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Literal

import gymnasium
import numpy as np

from vlmq_core.envs import MINIWOB_TASKS
from vlmq_core.envs.spec import OracleAction, TaskSpec
from vlmq_core.envs.text_action import ACTION_TAG, TaskPrompt, TextActionConfig, after_tag, shorten
from vlmq_core.envs.web_actions import ACTIONS, parse_web_action

CHROMIUM_FLAGS: tuple[str, ...] = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
"""Added to every Chromium launch: no sandbox (containers run as root), no GPU, and nothing dialling out."""

MINIWOB_TEXT_CONFIG = TextActionConfig(
    invalid_reward=-2.0, max_consecutive_invalid=5, timeout_reward=-10.0, max_steps=25
)
"""METHOD.md Table 4, MiniWoB column."""

FRAME_SHAPE = (321, 498, 3)
"""The screenshot: MiniWoB's 332 x 214 viewport at BrowserGym's 1.5 zoom (height, width, RGB)."""

_INSTALL = "pip install -e '.[web]' (miniwob, browsergym-core and browsergym-miniwob)"


class BrowserUnavailable(RuntimeError):
    """Chromium, Playwright or the MiniWoB++ pages are missing; the message says what to install."""


def chromium_executable() -> str:
    """The Chromium binary: ``$VLMQ_CHROMIUM``, else Debian's ``chromium`` on the PATH or in /usr/lib/chromium."""
    configured = os.environ.get("VLMQ_CHROMIUM")
    if configured:
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise BrowserUnavailable(f"VLMQ_CHROMIUM={configured!r} is not an executable file; point it at Chromium.")
        return configured
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise BrowserUnavailable(
        "Chromium was not found: install Debian's with `apt-get install -y chromium` (or set VLMQ_CHROMIUM to a "
        "Chromium binary); `playwright install` is not needed."
    )


def miniwob_url() -> str:
    """``file://`` URL of the MiniWoB++ task pages shipped in the ``miniwob`` wheel (``$MINIWOB_URL`` if set)."""
    if os.environ.get("MINIWOB_URL"):
        return os.environ["MINIWOB_URL"]
    spec = importlib.util.find_spec("miniwob")
    pages = Path(spec.origin).parent / "html" / "miniwob" if spec and spec.origin else None
    if pages is None or not (pages / "click-test.html").is_file():
        raise BrowserUnavailable(f"The MiniWoB++ task pages were not found: {_INSTALL}.")
    return pages.as_uri() + "/"


class _BrowserThread:
    """One daemon thread that owns Playwright and runs every browser call, in order (:meth:`call`)."""

    def __init__(self) -> None:
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="vlmq-browser", daemon=True)
        self._thread.start()
        self.playwright = None

    def _loop(self) -> None:
        # Ctrl-C and kill must reach the main thread: a process-directed signal goes to any thread that does not
        # block it, and one taken here (or by the threads and driver Playwright starts from here, which inherit
        # this mask) would leave the main thread asleep and the run deaf to it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        while True:
            fn, args, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to the caller
                future.set_exception(e)

    def call(self, fn: Callable, *args: Any, timeout: float | None = None) -> Any:
        future: Future = Future()
        self._jobs.put((fn, args, future))
        return future.result(timeout)

    def start_playwright(self) -> Any:
        """(On the thread) start Playwright once, make its Chromium launches use Debian's binary and our flags,
        and hand it to BrowserGym (which launches the task page and its chat window through it)."""
        if self.playwright is not None:
            return self.playwright
        try:
            from browsergym.core import _set_global_playwright
            from playwright.sync_api import sync_playwright
        except ImportError as e:
            raise BrowserUnavailable(f"BrowserGym or Playwright is not installed ({e}): {_INSTALL}.") from None
        executable = chromium_executable()
        pw = sync_playwright().start()
        launch = pw.chromium.launch

        @functools.wraps(launch)
        def launch_debian_chromium(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("executable_path", executable)
            kwargs["args"] = [*kwargs.get("args", []), *CHROMIUM_FLAGS]
            return launch(*args, **kwargs)

        pw.chromium.launch = launch_debian_chromium
        _set_global_playwright(pw)
        self.playwright = pw
        return pw

    def stop_playwright(self) -> None:
        """(On the thread) stop Playwright: its driver closes every browser it launched."""
        if self.playwright is not None:
            pw, self.playwright = self.playwright, None
            pw.stop()


_THREAD: _BrowserThread | None = None
_LOCK = threading.Lock()
_OPEN: set[MiniWoBEnv] = set()


def _browser_thread() -> _BrowserThread:
    global _THREAD
    with _LOCK:
        if _THREAD is None:
            _THREAD = _BrowserThread()
            atexit.register(shutdown)
        return _THREAD


def shutdown() -> None:
    """Close every MiniWoB env of this process and stop Playwright (also registered with ``atexit``)."""
    for env in list(_OPEN):
        env.close()
    if _THREAD is not None:
        try:
            _THREAD.call(_THREAD.stop_playwright, timeout=30)
        except Exception:  # already stopped or dead: nothing left to close
            pass


def _is_browser_failure(error: BaseException) -> bool:
    """A Playwright error (the browser, its context or page is gone), as opposed to a bug of ours."""
    return type(error).__module__.startswith("playwright")


class MiniWoBEnv(gymnasium.Env):
    """One MiniWoB++ task in its own Chromium (BrowserGym's ``BrowserEnv``), its observation as frame + text."""

    metadata = {"render_modes": ["rgb_array"]}
    MEMORY_GB = 0.6
    """Memory one env holds (its two Chromium instances), which caps parallel envs by free memory.
    ``benchmarks/bench_miniwob.py`` measured 0.39 GB per env (proportional set size, 3 click-test envs, 2-core
    EPYC) and a 0.18-0.34 GB fall of available memory per env opened; 0.6 leaves room for heavier pages."""

    def __init__(
        self,
        task: str = "click-test",
        page: Literal["axtree", "html"] = "axtree",
        max_page_chars: int = 3000,
        slow_mo: int | None = 0,
        pre_observation_delay: float = 0.1,
    ):
        """`page`: how the page is written in the text observation; `max_page_chars` cuts it (a 135M model's
        context is 8k tokens; the paper's "simplified" prompt had no HTML at all). `slow_mo` (ms per Playwright
        operation) and `pre_observation_delay` (s before each observation) are ours: 0 and 0.1 instead of the
        task's 100 and BrowserGym's 0.5 (None and 0.5 restore them; ``benchmarks/bench_miniwob.py`` times both)."""
        if task not in MINIWOB_TASKS:
            raise ValueError(f"unknown MiniWoB task {task!r}; the click tasks: {', '.join(MINIWOB_TASKS)}")
        if page not in ("axtree", "html"):
            raise ValueError(f"page must be 'axtree' or 'html', got {page!r}")
        self.task, self.page, self.max_page_chars = task, page, max_page_chars
        self.slow_mo, self.pre_observation_delay = slow_mo, pre_observation_delay
        self.action_space = gymnasium.spaces.Text(max_length=600)
        self.observation_space = gymnasium.spaces.Box(0, 255, shape=FRAME_SHAPE, dtype=np.uint8)
        self._env: Any = None  # BrowserGym's BrowserEnv, made on the browser thread
        self._base_url = ""  # the task pages' URL, found when the first browser starts
        self._obs: dict[str, Any] = {}
        self._text = ""
        self.goal = ""
        self._frame = np.zeros(FRAME_SHAPE, dtype=np.uint8)
        self.restarts = 0
        """Browsers replaced after a crash, over this env's life."""

    # ---- everything below marked (thread) runs on the browser thread ------------------------------------
    def _make(self) -> Any:  # (thread)
        import browsergym.miniwob  # noqa: F401  (registers browsergym/miniwob.*)
        from browsergym.core.action.highlevel import HighLevelActionSet

        actions = HighLevelActionSet(subsets=["bid"], multiaction=False, strict=True)
        self._base_url = miniwob_url()

        def to_code(call: str) -> str:
            if parse_web_action(f"{ACTION_TAG} {call}") != call:  # only calls our parser wrote
                raise ValueError(f"refused an action vlmq's parser did not write: {shorten(call)!r}")
            return actions.to_python_code(call)

        # BrowserGym warns that slow_mo 0 overrides the task's 100 ms: the choice is ours and documented above
        logging.getLogger("browsergym.core.env").setLevel(logging.ERROR)
        return gymnasium.make(
            f"browsergym/miniwob.{self.task}",
            headless=True,
            slow_mo=self.slow_mo,
            pre_observation_delay=self.pre_observation_delay,
            action_mapping=to_code,
            task_kwargs={"base_url": self._base_url},
            disable_env_checker=True,
        )

    def _reset(self, seed: int | None) -> tuple[dict, dict]:  # (thread)
        _browser_thread().start_playwright()
        if self._env is None:
            self._env = self._make()
        try:
            return self._env.reset(seed=seed)
        except Exception as e:
            if not _is_browser_failure(e):
                raise
            self._discard()  # a dead browser from the last episode: start over once
            self.restarts += 1
            self._env = self._make()
            return self._env.reset(seed=seed)

    def _step(self, call: str) -> tuple:  # (thread)
        try:
            return self._env.step(call)
        except Exception as e:
            if not _is_browser_failure(e):
                raise
            self._discard()
            return None, f"{type(e).__name__}: {e}"

    def _discard(self) -> None:  # (thread)
        env, self._env = self._env, None
        if env is not None:
            try:
                env.close()
            except Exception:  # a crashed browser may fail to close; Playwright reaps it
                pass

    # ---- the gymnasium interface ------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        _OPEN.add(self)
        obs, info = _browser_thread().call(self._reset, seed)
        self._observe(obs)
        return self._frame, {"goal": obs["goal"], "url": obs["url"], "task_info": info.get("task_info", {})}

    def step(self, action: str) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._env is None:
            raise RuntimeError("the episode is over (its browser crashed) or never started: call reset() first")
        out = _browser_thread().call(self._step, action)
        if out[0] is None:  # the browser died: end the episode, mark it; reset() starts a new browser
            self.restarts += 1
            return self._frame, 0.0, False, True, {"browser_crash": True, "action_error": out[1]}
        obs, reward, terminated, truncated, info = out
        self._observe(obs)
        state = {"action_error": obs["last_action_error"] or None, "task_info": info.get("task_info", {})}
        return self._frame, float(reward), bool(terminated), bool(truncated), state

    def _observe(self, obs: dict) -> None:
        from browsergym.utils.obs import flatten_axtree_to_str, flatten_dom_to_str, prune_html

        self._obs = obs
        self.goal = str(obs["goal"])
        self._frame = np.asarray(obs["screenshot"], dtype=np.uint8)
        if self.page == "axtree":
            page = flatten_axtree_to_str(obs["axtree_object"], extra_properties=obs["extra_element_properties"])
        else:
            page = prune_html(flatten_dom_to_str(obs["dom_object"]))
        page = page.replace(self._base_url, "").strip()  # the page's own name, not this machine's folders
        if len(page) > self.max_page_chars:
            page = page[: self.max_page_chars] + "\n... (page cut)"
        self._text = f"Goal: {obs['goal']}\nPage:\n{page}"

    def text(self) -> str:
        """The observation text: the goal, then the page (accessibility tree or HTML), cut."""
        return self._text

    def elements(self) -> list[str]:
        """Ids (bids) of the page's visible, clickable elements, in page order."""
        props = self._obs.get("extra_element_properties", {})
        return [bid for bid, p in props.items() if p.get("clickable") and (p.get("visibility") or 0) > 0.5]

    def render(self) -> np.ndarray:
        return self._frame

    def close(self) -> None:
        _OPEN.discard(self)
        if self._env is not None and _THREAD is not None:
            try:
                _THREAD.call(self._discard, timeout=60)
            except Exception:
                self._env = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


# ---- the text-action side: prompt, parser, random actions -------------------------------------------------
_DOCS = {
    "click": 'click(bid, button="left", modifiers=[]): click the element',
    "dblclick": 'dblclick(bid, button="left", modifiers=[]): double-click the element',
    "hover": "hover(bid): move the mouse over the element",
    "focus": "focus(bid): focus the element",
    "clear": "clear(bid): clear a text field",
    "fill": "fill(bid, value): type a text into a field",
    "select_option": "select_option(bid, options): pick one option (or a list) of a <select>",
    "press": 'press(bid, key_comb): press a key on the element, e.g. "Enter" or "Control+a"',
    "scroll": "scroll(delta_x, delta_y): scroll the page by pixels",
    "noop": "noop(wait_ms=1000): do nothing, wait",
}
assert set(_DOCS) == set(ACTIONS)

WEB_PROMPT = TaskPrompt(
    description=(
        "You control a web browser. Complete the goal by calling one browser function per reply. Page elements "
        "are named by their bid, the id in [brackets] before each element of the page below."
    ),
    actions=list(ACTIONS),
    action_doc="\n".join(_DOCS.values()),
    example='[action] click("13")',
)


def parse_reply(reply: str, actions: Sequence[str]) -> str | None:
    """The text-action parser for web tasks: the canonical call :func:`parse_web_action` rebuilds, or None."""
    return parse_web_action(reply)


def web_invalid_reason(reply: str, actions: Sequence[str]) -> str:
    """Why a reply is not an allowed call, for the next prompt."""
    rest = after_tag(reply)
    if rest is None:
        return f"no `{ACTION_TAG}` tag found."
    if not rest.strip():
        return f"no call after `{ACTION_TAG}`."
    return f"{shorten(rest.strip())!r} is not one call of {', '.join(actions)} with literal arguments."


def random_action(env: gymnasium.Env, rng: np.random.Generator) -> str:
    """A random valid action on the current page: a click on a uniformly drawn visible, clickable element
    (``noop()`` on a page without one), e.g. ``click("13")``."""
    elements = env.unwrapped.elements()
    if not elements:
        return "noop()"
    return f'click("{elements[int(rng.integers(len(elements)))]}")'


# ---- a scripted demonstrator: reads the accessibility tree, for the tasks it can solve ------------------------
_NODE = re.compile(r"^\s*\[(?P<bid>[A-Za-z0-9]+)\] (?P<role>\w+) '(?P<name>(?:[^'\\]|\\.)*)'(?P<rest>.*)$")


def page_elements(text: str) -> list[tuple[str, str, str, str]]:
    """``(bid, role, name, properties)`` of each element with a bid, from the observation text's page lines
    (``[24] radio 'QWS1FL', checked='false'`` -> ``("24", "radio", "QWS1FL", ", checked='false'")``)."""
    return [(m["bid"], m["role"], m["name"], m["rest"]) for m in map(_NODE.match, text.splitlines()) if m]


def _first(elements: list, role: str, name: str | None = None) -> str | None:
    return next((b for b, r, n, _ in elements if r == role and (name is None or n == name)), None)


def _click(bid: str | None, thought: str) -> OracleAction | None:
    return None if bid is None else OracleAction(f'click("{bid}")', thought)


def _select_then_submit(goal: str, elements: list, role: str) -> OracleAction | None:
    match = re.fullmatch(r"Select (.*) and click Submit\.", goal)
    if match is None:
        return None
    wanted = set() if match[1] == "nothing" else {w.strip() for w in match[1].split(",")}
    for bid, r, name, rest in elements:
        if r == role and name in wanted and "checked='true'" not in rest:
            return _click(bid, f"{name} is asked for and not selected yet.")
    return _click(_first(elements, "button", "Submit"), "Everything asked for is selected: submit.")


def _named_button(pattern: str, aliases: dict[str, str] | None = None):
    def decide(goal: str, elements: list) -> OracleAction | None:
        match = re.search(pattern, goal)
        if match is None:
            return None
        name = (aliases or {}).get(match[1], match[1])
        return _click(_first(elements, "button", name), f"The goal names the button {match[1]!r}.")

    return decide


def _collapsible(goal: str, elements: list) -> OracleAction | None:
    closed = next((b for b, r, n, rest in elements if r == "tab" and n != "Submit" and "expanded=False" in rest), None)
    if closed is not None:
        return _click(closed, "The section is closed: open it first.")
    return _click(_first(elements, "button", "Submit"), "The section is open: submit.")


def _tab(goal: str, elements: list) -> OracleAction | None:
    match = re.fullmatch(r"Click on (Tab #\d+)\.", goal)
    return None if match is None else _click(_first(elements, "link", match[1]), f"{match[1]} is the tab asked for.")


DEMONSTRATIONS: dict[str, Callable[[str, list], OracleAction | None]] = {
    "click-test": lambda goal, elements: _click(_first(elements, "button"), "There is one button: click it."),
    "click-test-2": _named_button(r"Click button (\w+)\."),
    "click-test-transfer": _named_button(r"Click button (\w+)\."),
    "click-button": _named_button(r'Click on the "(.+)" button\.'),
    "click-dialog": lambda goal, elements: _click(_first(elements, "button", "Close"), "The x closes the dialog."),
    "click-dialog-2": _named_button(r'labeled "(.+)"\.', {"x": "Close"}),
    "click-option": lambda goal, elements: _select_then_submit(goal, elements, "radio"),
    "click-checkboxes": lambda goal, elements: _select_then_submit(goal, elements, "checkbox"),
    "click-tab": _tab,
    "click-collapsible": _collapsible,
}
"""The tasks the scripted demonstrator solves, each a rule over the goal and the page's elements."""


def demonstrator(env: gymnasium.Env) -> OracleAction:
    """The scripted demonstrator's next action on a :data:`DEMONSTRATIONS` task, read from the page like the model
    reads it (the accessibility tree of the observation text); ``noop()`` when its rule finds nothing to do."""
    inner = env.unwrapped
    goal = inner.goal
    decision = DEMONSTRATIONS[inner.task](goal, page_elements(inner.text()))
    return decision if decision is not None else OracleAction("noop()", "Nothing on the page matches the goal.")


def partial_prefix(rng: np.random.Generator) -> str:
    """The paper's partial exploration: ``[action]`` and a uniformly drawn allowed function, opened (``click(``);
    the model writes the arguments."""
    names = list(ACTIONS)
    return f"{ACTION_TAG} {names[int(rng.integers(len(names)))]}("


TASKS = {
    f"MiniWoB-{task}": TaskSpec(
        name=f"MiniWoB-{task}",
        prompt=WEB_PROMPT,
        text_config=MINIWOB_TEXT_CONFIG,
        parser=parse_reply,
        invalid_reason=web_invalid_reason,
        random_action=random_action,
        partial_prefix=partial_prefix,
        memory_gb=MiniWoBEnv.MEMORY_GB,
        oracle=demonstrator if task in DEMONSTRATIONS else None,
    )
    for task in MINIWOB_TASKS
}
