"""Batches for training: mixed datasets, a resumable sampler, a DataLoader with workers.

The sampler is a pure function of (seed, epoch, position): batch b of epoch e is always
the same indices with the same augmentation keys. A run that stopped after k batches
resumes by starting the sampler at batch k, which gives exactly the batches the
uninterrupted run would have seen, whatever the number of workers.
"""
from __future__ import annotations

import bisect
import ctypes
import functools
import os
import signal
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class MixedDataset(Dataset):
    """Datasets one after another; `weights` give each dataset's share of a batch."""

    def __init__(self, datasets: Sequence[Dataset], weights: Optional[Sequence[float]] = None):
        if not datasets:
            raise ValueError("MixedDataset needs at least one dataset")
        self.datasets = list(datasets)
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets]).tolist()
        weights = [1.0] * len(self.datasets) if weights is None else [float(w) for w in weights]
        if len(weights) != len(self.datasets) or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(f"dataset weights must be one non-negative number per dataset, got {weights}")
        self.weights = weights

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, item):
        index, key = item if isinstance(item, tuple) else (item, None)
        d = bisect.bisect_right(self.offsets, int(index)) - 1
        sample = self.datasets[d][(int(index) - self.offsets[d], key)]
        sample["index"] = np.int64(index)
        return sample

    def sample_probabilities(self) -> Optional[np.ndarray]:
        """Per-sample probability of being drawn, or None for a plain shuffle (one dataset)."""
        if len(self.datasets) == 1:
            return None
        per_sample = [np.full(len(d), w / sum(self.weights) / len(d)) for d, w in zip(self.datasets, self.weights)]
        return np.concatenate(per_sample)


class ResumableBatchSampler(Sampler):
    """Endless batches of (index, augmentation key) for one rank, from `start_batch` on.

    Each epoch is a permutation (or, with `probabilities`, weighted draws with
    replacement) seeded by (seed, epoch); rank r of `world_size` takes every world_size-th
    index. The augmentation key (seed, epoch, position) makes each crop reproducible.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, probabilities=None,
                 rank: int = 0, world_size: int = 1, start_batch: int = 0):
        if batch_size < 1 or num_items < batch_size * world_size:
            raise ValueError(f"need at least batch_size x world_size = {batch_size * world_size} samples, "
                             f"the dataset has {num_items}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, int(seed)
        self.probabilities = probabilities
        self.rank, self.world_size = rank, world_size
        self.start_batch = int(start_batch)

    @property
    def batches_per_epoch(self) -> int:
        return self.num_items // (self.batch_size * self.world_size)

    def epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        if self.probabilities is None:
            return rng.permutation(self.num_items)
        return rng.choice(self.num_items, size=self.num_items, p=self.probabilities)

    def __iter__(self):
        epoch, batch = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            order = self.epoch_order(epoch)[self.rank::self.world_size]
            for b in range(batch, self.batches_per_epoch):
                positions = range(b * self.batch_size, (b + 1) * self.batch_size)
                yield [(int(order[p]), (self.seed, epoch, self.rank, p)) for p in positions]
            epoch, batch = epoch + 1, 0


def collate(samples: list) -> dict:
    """Stack the fixed-shape arrays of each sample into tensors."""
    return {k: torch.as_tensor(np.stack([s[k] for s in samples])) for k in samples[0]}


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent_pid: Optional[int]) -> None:
    """Linux: have the kernel SIGKILL this worker as soon as its parent dies (a trainer killed
    with SIGKILL cannot stop its workers, and torch's own watchdog notices only every 5 s).
    The parent may already be gone by the time this runs: then the worker has been re-parented
    and kills itself. A no-op elsewhere. (Linux sends the signal when the *thread* that
    started the worker exits: DataLoader iterators are made on the main thread here.)"""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
            return
    except (OSError, AttributeError):  # no prctl in this libc
        return
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def _worker_parent() -> Optional[int]:
    """The pid a worker's parent will have: this process, unless workers come from a forkserver."""
    import torch.multiprocessing as mp

    method = mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]  # (the first is the default)
    return None if method == "forkserver" else os.getpid()


def _worker_init(worker_id: int, parent_pid: Optional[int] = None) -> None:
    """Die with the parent process (see `_die_with_parent`), then one thread per worker for
    OpenCV and torch: the workers are the parallelism, and threads inside each would only
    oversubscribe the cores. (torch seeds each worker itself, before this runs.)"""
    _die_with_parent(parent_pid)
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def make_train_loader(dataset: MixedDataset, batch_size: int, seed: int, num_workers: int = 4,
                      start_batch: int = 0, rank: int = 0, world_size: int = 1,
                      pin_memory: bool = False) -> DataLoader:
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, dataset.sample_probabilities(),
                                    rank, world_size, start_batch)
    # A private generator: creating the loader must not draw from torch's global RNG, which
    # drives dropout and has to continue exactly across a resume.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      worker_init_fn=functools.partial(_worker_init, parent_pid=_worker_parent()),
                      prefetch_factor=4 if num_workers > 0 else None,
                      generator=torch.Generator().manual_seed(seed))


def make_eval_loader(dataset: Dataset, batch_size: int, num_workers: int = 2) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate, worker_init_fn=functools.partial(_worker_init, parent_pid=_worker_parent()),
                      generator=torch.Generator().manual_seed(0))
