"""MergeVLA's Meta-World suites, templated instructions, the fixed vocabulary and variations.

Four suites of Meta-World v3 tasks on the one Sawyer arm, grouped like LIBERO's suites (tasks of
a suite share a kind of scene, so the instruction is what tells them apart):

==============  =============================================================================
suite           tasks (Meta-World v3 names)
==============  =============================================================================
``reach_push``  ``reach-v3``, ``push-v3``, ``pick-place-v3``
``drawer``      ``drawer-open-v3``, ``drawer-close-v3``
``door_window`` ``door-close-v3``, ``window-open-v3``, ``window-close-v3``
``button``      ``button-press-v3``, ``button-press-topdown-v3``, ``button-press-topdown-wall-v3``
==============  =============================================================================

Every task's scripted expert (``metaworld.policies``) succeeds in >= 95 % of episodes with
Gaussian action noise 0.1 (measured on all 50 variations; see :data:`DROPPED_TASKS` for the two
that were left out and why).

A *variation* of a task is one of Meta-World's 50 task objects of ``metaworld.MT1(task,
seed=VARIATION_SEED)`` (object and goal placement); an episode is one task in one variation.
:func:`split_variations` splits the 50 into training and held-out variations (seeded); the
benchmark evaluates on the held-out ones. Indices from ``N_VARIATIONS`` up to ``N_VARIATIONS +
N_EXTRA_VARIATIONS`` are *extra* variations: more placements drawn by Meta-World's own generator
(``metaworld.MT1`` with other seeds), for more training data; never evaluated.

Instructions are token ids over the fixed :data:`VOCAB` (index 0 is padding), padded to
:data:`INSTRUCTION_LEN`. There is no unknown-word token: :func:`tokenize` rejects a word outside
the vocabulary, naming it.

>>> SUITES["drawer"]
('drawer-open-v3', 'drawer-close-v3')
>>> TASKS["button-press-topdown-v3"].instruction
'press the button from the top'
>>> ids = tokenize("open the drawer")
>>> ids.shape == (INSTRUCTION_LEN,), ids.dtype.name, detokenize(ids)
(True, 'int64', 'open the drawer')
>>> train, heldout = split_variations()
>>> len(train), len(heldout), sorted(set(train) | set(heldout)) == list(range(N_VARIATIONS))
(40, 10, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "ALL_TASK_NAMES",
    "DROPPED_TASKS",
    "INSTRUCTION_LEN",
    "INSTRUCTION_TEMPLATE",
    "N_EXTRA_VARIATIONS",
    "N_VARIATIONS",
    "PAD_ID",
    "PRETRAIN_SUITE",
    "PRETRAIN_TASKS",
    "SUITES",
    "TASKS",
    "TASK_GROUPS",
    "TASK_NAMES",
    "VARIATION_SEED",
    "VOCAB",
    "TaskSpec",
    "detokenize",
    "split_variations",
    "task_spec",
    "tokenize",
]

# Every instruction is "<verb> the <object><detail>": the verb names the skill, the detail tells
# apart tasks on the same object (the three button presses).
INSTRUCTION_TEMPLATE = "{verb} the {object}{detail}"


@dataclass(frozen=True)
class TaskSpec:
    """One Meta-World task of a suite: its name, suite, instruction and episode length.

    ``max_steps``: the episode is truncated after this many steps; about twice the slowest
    scripted-expert success measured over the 50 variations (noise 0.1), rounded up to 50 and at
    least 150, so a learned policy has slack."""

    name: str
    suite: str
    verb: str
    object: str
    detail: str
    max_steps: int

    @property
    def instruction(self) -> str:
        return INSTRUCTION_TEMPLATE.format(verb=self.verb, object=self.object, detail=self.detail)


_TASK_LIST = (
    # suite reach_push: goal-directed motion of the hand or the puck (goal marker visible)
    TaskSpec("reach-v3", "reach_push", "reach", "goal", "", 200),
    TaskSpec("push-v3", "reach_push", "push", "puck", " to the goal", 200),
    TaskSpec("pick-place-v3", "reach_push", "pick up", "puck", " and place it at the goal", 150),
    # suite drawer: one drawer, opened or closed
    TaskSpec("drawer-open-v3", "drawer", "open", "drawer", "", 200),
    TaskSpec("drawer-close-v3", "drawer", "close", "drawer", "", 200),
    # suite door_window: hinged door and sliding window
    TaskSpec("door-close-v3", "door_window", "close", "door", "", 200),
    TaskSpec("window-open-v3", "door_window", "open", "window", "", 200),
    TaskSpec("window-close-v3", "door_window", "close", "window", "", 200),
    # suite button: one button box, pressed from different sides
    TaskSpec("button-press-v3", "button", "press", "button", " from the front", 150),
    TaskSpec("button-press-topdown-v3", "button", "press", "button", " from the top", 150),
    TaskSpec("button-press-topdown-wall-v3", "button", "press", "button",
             " from the top behind the wall", 150),
)

# Pre-training tasks: Meta-World tasks outside every suite (other objects, other motions), whose
# demonstrations teach the base's action expert to act from images and instructions without
# teaching any suite's skill. Their scripted experts succeeded in 12/12 episodes each (noise 0.1).
PRETRAIN_SUITE = "pretrain"
_PRETRAIN_LIST = (
    TaskSpec("faucet-open-v3", PRETRAIN_SUITE, "open", "faucet", "", 200),
    TaskSpec("faucet-close-v3", PRETRAIN_SUITE, "close", "faucet", "", 200),
    TaskSpec("handle-press-v3", PRETRAIN_SUITE, "press", "handle", " down", 200),
    TaskSpec("handle-pull-v3", PRETRAIN_SUITE, "pull", "handle", " up", 250),
    TaskSpec("lever-pull-v3", PRETRAIN_SUITE, "pull", "lever", " up", 200),
    TaskSpec("plate-slide-v3", PRETRAIN_SUITE, "slide", "plate", " to the goal", 200),
    TaskSpec("dial-turn-v3", PRETRAIN_SUITE, "turn", "dial", "", 200),
)

TASKS: dict[str, TaskSpec] = {t.name: t for t in (*_TASK_LIST, *_PRETRAIN_LIST)}
TASK_NAMES: tuple[str, ...] = tuple(t.name for t in _TASK_LIST)  # every task of every suite
PRETRAIN_TASKS: tuple[str, ...] = tuple(t.name for t in _PRETRAIN_LIST)
ALL_TASK_NAMES: tuple[str, ...] = (*TASK_NAMES, *PRETRAIN_TASKS)
SUITES: dict[str, tuple[str, ...]] = {}
for _t in _TASK_LIST:
    SUITES.setdefault(_t.suite, ())
    SUITES[_t.suite] += (_t.name,)
#: the suites and the pre-training group, the groups demonstrations are stacked by
TASK_GROUPS: dict[str, tuple[str, ...]] = {**SUITES, PRETRAIN_SUITE: PRETRAIN_TASKS}

# Candidates left out: their scripted experts stay under 95 % success (all 50 variations,
# Gaussian action noise 0.1, 500 steps).
DROPPED_TASKS: dict[str, str] = {
    "door-open-v3": "scripted expert 92 % (46/50 variations) with action noise 0.1",
    "button-press-wall-v3": "scripted expert 94 % (47/50 variations) with action noise 0.1",
}

# ----- vocabulary ----------------------------------------------------------------------------------

PAD_ID = 0
# Fixed: appending words keeps every id; reordering or removing changes the token ids of stored
# demonstrations and trained models.
VOCAB: tuple[str, ...] = (
    "<pad>",
    "the", "reach", "push", "pick", "up", "place", "open", "close", "press", "slide", "turn",
    "goal", "puck", "it", "drawer", "door", "window", "button", "wall",
    "to", "and", "at", "from", "front", "top", "side", "behind",
    "faucet", "handle", "down", "pull", "lever", "plate", "dial",  # the pre-training tasks
)
WORD_IDS: dict[str, int] = {w: i for i, w in enumerate(VOCAB)}
INSTRUCTION_LEN = 12  # tokens per instruction (the longest one has 9 words)


def tokenize(text: str) -> np.ndarray:
    """Token ids (int64, shape ``(INSTRUCTION_LEN,)``) of a lower-cased, whitespace-split
    instruction, padded with :data:`PAD_ID`. A word outside :data:`VOCAB` is an error.

    >>> tokenize("Press the button.")[:4].tolist()
    [9, 1, 18, 0]
    """
    if not isinstance(text, str):
        raise TypeError(f"tokenize takes a string, got {type(text).__name__}")
    words = [w.strip(".,;:!?") for w in text.lower().split()]
    words = [w for w in words if w]
    if not words:
        raise ValueError("instruction is empty")
    unknown = [w for w in words if w not in WORD_IDS or w == VOCAB[PAD_ID]]
    if unknown:
        raise ValueError(f"instruction {text!r}: word {unknown[0]!r} is not in the vocabulary "
                         f"(streammoe_envs.metaworld.suites.VOCAB); rephrase it or append the word "
                         f"to VOCAB (appending keeps existing ids)")
    if len(words) > INSTRUCTION_LEN:
        raise ValueError(f"instruction {text!r} has {len(words)} words, more than "
                         f"INSTRUCTION_LEN={INSTRUCTION_LEN}; shorten it")
    ids = np.full(INSTRUCTION_LEN, PAD_ID, dtype=np.int64)
    ids[: len(words)] = [WORD_IDS[w] for w in words]
    return ids


def detokenize(ids: np.ndarray) -> str:
    """The words of token ids, padding dropped (inverse of :func:`tokenize` on normalised text)."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= len(VOCAB)):
        raise ValueError(f"token ids must lie in [0, {len(VOCAB)}), got {ids.tolist()}")
    return " ".join(VOCAB[int(i)] for i in ids if int(i) != PAD_ID)


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of a task name, or an error that lists the valid names."""
    if task in TASKS:
        return TASKS[task]
    hint = f" (dropped: {DROPPED_TASKS[task]})" if task in DROPPED_TASKS else ""
    raise ValueError(f"unknown MergeVLA task {task!r}{hint}; choose one of {list(ALL_TASK_NAMES)}")


# ----- variations ----------------------------------------------------------------------------------

N_VARIATIONS = 50  # Meta-World's task objects per task (metaworld.MT1(...).train_tasks)
VARIATION_SEED = 0  # seed of metaworld.MT1, which draws the 50 object/goal placements
# Extra variations, for more training data only (never evaluated): indices N_VARIATIONS and up,
# drawn by the same generator, metaworld.MT1(task, seed=VARIATION_SEED + 1 + b).train_tasks[i]
# for index N_VARIATIONS + 50 b + i; at most this many.
N_EXTRA_VARIATIONS = 1000


def split_variations(n_heldout: int = 10, seed: int = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Training and held-out variation indices (each sorted), one seeded permutation of
    ``range(N_VARIATIONS)``; the same split for every task."""
    if not 1 <= n_heldout < N_VARIATIONS:
        raise ValueError(f"n_heldout must be in [1, {N_VARIATIONS - 1}], got {n_heldout}")
    perm = np.random.default_rng(seed).permutation(N_VARIATIONS)
    heldout = tuple(sorted(int(i) for i in perm[:n_heldout]))
    train = tuple(sorted(int(i) for i in perm[n_heldout:]))
    return train, heldout
