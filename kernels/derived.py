"""Data derived from a model's tensor (oneDNN's packed blend matrix, the skinning weights in
sparse form), made once and kept beside the tensor: rebuilt when the tensor (or another it
was made with) is edited in place or replaced, dropped when the tensor is freed.

Never part of a module's state, so `state_dict`, `.to()` and pickling see only the tensor.
"""
from __future__ import annotations

import weakref

import torch

# (name, id(tensor)) -> (weak reference to the tensor, stamp of what it was made from, value).
# Tensors compare elementwise, so they cannot key a WeakKeyDictionary; the weak reference's
# callback removes an entry when its tensor goes, before the id can be reused.
_CACHE: dict = {}


def _version(t: torch.Tensor):
    """In-place edits bump a tensor's version; inference tensors (made under inference_mode)
    keep none, and can be edited only inside inference_mode: their edits go unseen here."""
    return None if t.is_inference() else t._version


def derived(name: str, tensor: torch.Tensor, make, *also: torch.Tensor):
    """make(tensor, *also), computed on first use and again whenever `tensor` or one of
    `also` has changed since."""
    key = (name, id(tensor))
    stamp = tuple((t.data_ptr(), _version(t)) for t in (tensor, *also))
    entry = _CACHE.get(key)
    if entry is None or entry[0]() is not tensor or entry[1] != stamp:
        ref = weakref.ref(tensor, lambda _, k=key: _CACHE.pop(k, None))
        entry = _CACHE[key] = (ref, stamp, make(tensor, *also))
    return entry[2]
