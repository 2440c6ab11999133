"""MergeVLA: per-suite experts of a small vision-language-action policy merged into one model.

Each suite (a group of Meta-World tasks) gets its own expert: LoRA adapters on a shared backbone
plus its own action expert, fine-tuned from one base. The experts are then merged into a single
model: the backbone's task vectors with TIES-merging and per-task TALL masks, the shared
action-expert blocks averaged, and the last action-expert block, final norm and output layer
kept per suite (the *expert heads*). At test time a training-free router picks the suite from the
first observation of an episode (value-projection subspaces scored under each task's mask), and
the episode runs with that suite's mask and head.

Modules:

* ``data``: Meta-World environments' scripted demonstrations, stored as HDF5, and action chunks;
* ``model``: the tiny VLA policy (``TinyVLA``, ``VLAConfig``), PEFT LoRA experts, the keys that
  merging and the router work on;
* ``merging``: model-agnostic merging over state dicts (task vectors, averaging, task arithmetic,
  TIES, TALL masks and their statistics, expert heads, mask files);
* ``router``: the test-time task router (``TestTimeTaskRouter``) on the router core
  (:mod:`streammoe.routing`).

Names are imported on first use (this package imports nothing heavy by itself):

>>> from streammoe.control.mergevla import TestTimeTaskRouter, ties_merge
>>> import torch
>>> ties_merge({"w": torch.zeros(2)}, [{"w": torch.tensor([1.0, -1.0])}], density=1.0)
{'w': tensor([ 1., -1.])}
"""

from streammoe.lazy import lazy_exports

# name -> defining module, imported on first use
_MERGING = "streammoe.control.mergevla.merging"
_ROUTER = "streammoe.control.mergevla.router"
_EXPORTS = {
    **{name: _MERGING for name in (
        "LAMBDA", "MERGE_METHODS", "MaskFile", "MaskStats", "MergedExperts", "apply_mask",
        "check_state_dicts", "key_selector", "load_masks", "mask_stats", "merge_experts",
        "merged_task_vector", "naive_average", "save_masks", "split_state_dict", "tall_masks",
        "task_arithmetic", "task_vectors", "ties_merge")},
    **{name: _ROUTER for name in (
        "Route", "TestTimeTaskRouter", "confusion_matrix", "route_scores", "value_basis")},
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
