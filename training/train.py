"""`hmr-fast train`: HMR's adversarial training from a YAML config.

    hmr-fast train --config training/configs/synthetic_smoke.yaml --data DIR --out RUN \
        [--steps N] [--device cpu|cuda] [--resume] [key=value ...]
    torchrun --nproc_per_node 8 -m hmr_fast.training.train --config ... (DistributedDataParallel)

Each step: the encoder + IEF regressor predict theta for a batch of crops; SMPL (the fused
Triton kernel on CUDA, joints only; the reference backend on CPU) gives 3D joints and
their projections; the encoder minimises keypoint + 3D + SMPL + adversarial losses, then
the discriminator takes an LSGAN step on prior samples (real) against every IEF
iteration's parameters (fake), as HMR does.

RUN/ gets: last.pt (atomic checkpoint), config.yaml, metrics.jsonl (one JSON object per
log), tb/ (TensorBoard). --resume continues from RUN/last.pt exactly: model, both
optimizers, schedulers, every RNG, the step and the data position. model.init=CKPT
fine-tunes instead: a new run whose HMR (and discriminator, when CKPT has one) start from
CKPT's weights, with fresh optimizers, step 0 and this config's data. A run (fresh or
resumed) first clears what a killed run left in RUN: the temp files of its interrupted
atomic writes (.last.pt.*.tmp, ...), and the metrics.jsonl records after the step it starts
from (TensorBoard hides those events too: purge_step), so each step is logged once.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from hmr_fast.atomic import atomic_path, remove_stale_temps
from hmr_fast.body.model_data import NUM_JOINTS
from hmr_fast.camera import normalise_images
from hmr_fast.data.coco import CocoDataset
from hmr_fast.data.loader import MixedDataset, make_eval_loader, make_train_loader
from hmr_fast.data.prior import PosePrior
from hmr_fast.data.spin_npz import SpinDataset
from hmr_fast.devices import DEVICES, resolve_device
from hmr_fast.errors import CheckpointError, TrainingDiverged
from hmr_fast.model import Discriminator, build_model, build_smpl, lsgan_discriminator_loss, lsgan_generator_loss
from hmr_fast.model.checkpoint import SMPL_PREFIX, load_weights, read_checkpoint, save_checkpoint
from hmr_fast.rotations import rodrigues

from . import losses
from .spin import SpinLoop, spin_rows
from .config import Config, ConfigError, config_from_dict, config_to_dict, load_config, apply_overrides
from .evaluate import evaluate_model

log = logging.getLogger("hmr_fast.train")
CHECKPOINT = "last.pt"
METRICS = "metrics.jsonl"
CONFIG_COPY = "config.yaml"
RUN_FILES = (CHECKPOINT, METRICS, CONFIG_COPY)  # what rank 0 writes atomically into the run folder
WEIGHTS_DIGEST_ENV = "HMR_FAST_WEIGHTS_DIGEST"  # tests: a folder where each process writes rank<R>.json at the end
NO_BAD_STEP = 2**62  # fit()'s device flag before any step's losses were NaN/Inf
LOSS_NAMES = ("loss/total", "loss/keypoints", "loss/joints3d", "loss/smpl", "loss/adversarial",
              "loss/disc_real", "loss/disc_fake")
SPIN_NAMES = ("spin/fits_used", "spin/fit_error")  # logged when spin.enabled


# ---------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------
class StepDecay:
    """Multiply an optimizer's learning rates by gamma at each milestone step (plain state)."""

    def __init__(self, optimizer, milestones, gamma: float):
        self.optimizer = optimizer
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.step_count = 0

    def step(self) -> None:
        self.step_count += 1
        factor = self.gamma ** sum(self.step_count >= m for m in self.milestones)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.base_lrs = list(state["base_lrs"])
        self.step_count -= 1
        self.step()  # re-apply the lr of the restored step


def build_dataset(spec, data_dir: Path, img_size: int, augment, drop_bad_labels: bool = False):
    path = data_dir / spec.path
    images = data_dir / spec.images
    if spec.kind == "spin":
        return SpinDataset(path, images, img_size, augment, drop_bad_labels=drop_bad_labels)
    if spec.kind == "coco":
        return CocoDataset(path, images, img_size, augment, drop_bad_labels=drop_bad_labels)
    raise ConfigError(f"dataset kind must be 'spin' or 'coco', got {spec.kind!r} (for {spec.path})")


def seed_static_fits(spin, specs, train_set, data_dir: Path) -> None:
    """SPIN's static fits (data/static_fits/<set>_fits.npy: (N, 82) = axis-angle pose 72 + betas 10,
    one row per sample of the set's npz, in the sample's own frame) as each set's starting fits."""
    import numpy as np

    for spec, offset, dataset in zip(specs, train_set.offsets, train_set.datasets):
        if not spec.fits:
            continue
        path = data_dir / spec.fits
        if not path.is_file():
            raise FileNotFoundError(f"data.train fits: {path} not found (SPIN's release puts its static fits in "
                                    "data/static_fits/<set>_fits.npy, fetch_data.sh's static_fits.tar.gz)")
        try:
            fits = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise ConfigError(f"data.train fits: {path} is not a numpy .npy array ({type(exc).__name__})") from None
        n = len(dataset)
        if not isinstance(fits, np.ndarray) or fits.shape != (n, 82) or fits.dtype.kind not in "fiu" \
                or not np.isfinite(fits).all():
            raise ConfigError(f"data.train fits: {path} has shape {getattr(fits, 'shape', None)}; expected ({n}, 82) "
                              f"finite numbers (pose 72 + betas 10), one row per sample of {spec.path}")
        index = torch.arange(offset, offset + n)
        spin.fits.store(index, torch.as_tensor(fits[:, :72], dtype=torch.float32),
                        torch.as_tensor(fits[:, 72:], dtype=torch.float32)[:, :spin.fits.betas.shape[1]])
        log.info("spin: %d static fits from %s", n, path)


def rng_state(device: torch.device, prior_generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "prior": prior_generator.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device, prior_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    prior_generator.set_state(state["prior"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def distributed_setup():
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return dist.get_rank(), world, local_rank


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------
class Trainer:
    """HMR's adversarial training (see the module docstring): `fit()` runs it."""

    def __init__(self, config: Config, data_dir, out_dir, resume: bool = False):
        self.config = config
        self.data_dir = Path(data_dir)
        self.out_dir = Path(out_dir)
        self._setup_process()
        checkpoint = self._previous_checkpoint(resume)
        self._setup_data()
        self._setup_models(init=config.model.init if checkpoint is None else None)  # a resumed run has its own
        self._setup_optimizers()
        sc = config.spin
        self.spin = SpinLoop(self.smpl, len(self.train_set), sc.fit_iters, sc.torso_iters, sc.max_error) \
            if sc.enabled else None
        if self.spin is not None:  # SPIN's static fits start the loop (a resumed run's own fits replace them)
            seed_static_fits(self.spin, config.data.train, self.train_set, self.data_dir)
        self.loss_names = LOSS_NAMES + (SPIN_NAMES if self.spin is not None else ())
        self.step = 0
        self.batches_consumed = 0
        self.skipped_images = 0
        if checkpoint is not None:
            self._restore(checkpoint)
        self._setup_training_modules()
        self.loader = make_train_loader(self.train_set, self.batch_size, config.train.seed, config.data.num_workers,
                                        start_batch=self.batches_consumed, rank=self.rank, world_size=self.world,
                                        pin_memory=self.device.type == "cuda")
        self.batches = iter(self.loader)
        if checkpoint is not None:  # last, after everything that might draw random numbers while being built
            self._restore_rng(checkpoint["rng"])
        self.is_main = self.rank == 0
        # TensorBoard hides the events a killed run logged after its checkpoint (step >= this one)
        self.purge_step = self.step + 1 if checkpoint is not None or (self.out_dir / "tb").is_dir() else None
        if self.is_main:
            self._prepare_run_dir()
        self.writer = None

    # -- setup ----------------------------------------------------------------------------
    def _setup_process(self) -> None:
        """Rank, device, per-process batch, determinism, threads and the seed."""
        tc = self.config.train
        self.rank, self.world, local_rank = distributed_setup()
        self.device = resolve_device(tc.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", local_rank)
        if tc.batch_size % self.world:
            raise ConfigError(f"train.batch_size {tc.batch_size} must divide by the {self.world} processes")
        self.batch_size = tc.batch_size // self.world
        if tc.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.amp = self.device.type == "cuda" and tc.amp in ("auto", "bf16")
        if tc.cpu_threads > 0:
            torch.set_num_threads(tc.cpu_threads)
        torch.manual_seed(tc.seed + self.rank)

    def _previous_checkpoint(self, resume: bool):
        """The run's checkpoint with --resume; without it, an existing one is an error."""
        path = self.out_dir / CHECKPOINT
        if resume:
            return read_checkpoint(path, map_location="cpu")
        if path.exists():
            raise FileExistsError(f"{path} exists: pass --resume to continue that run, or choose another --out")
        return None

    def _prepare_run_dir(self) -> None:
        """Rank 0: the run folder, without what a killed run left in it (its half-written temp
        files; log records after the step this run starts from), and this run's config."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        removed = [p for name in RUN_FILES for p in remove_stale_temps(self.out_dir / name)]
        if removed:
            log.info("removed %d temp file(s) an interrupted write left in %s: %s", len(removed), self.out_dir,
                     ", ".join(p.name for p in removed))
        self._drop_records_after(self.step)
        with atomic_path(self.out_dir / CONFIG_COPY) as tmp:
            tmp.write_text(yaml.safe_dump(config_to_dict(self.config), sort_keys=False))

    def _drop_records_after(self, step: int) -> None:
        """Rewrite metrics.jsonl (atomically) without the records after `step`: a run killed
        after its last checkpoint logged steps that this run logs again (each step once), and
        a line the kill cut short."""
        path = self.out_dir / METRICS
        if not path.is_file():
            return
        kept, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] > step:
                dropped += 1
                continue
            kept.append(line + "\n")
        if dropped:
            with atomic_path(path) as tmp:
                tmp.write_text("".join(kept))
            log.info("%s: dropped %d record(s) logged after step %d, where this run starts", path, dropped, step)

    def _setup_data(self) -> None:
        """Training sets, pose prior and validation set: everything is checked here, before the first step."""
        config = self.config
        img_size = config.model.img_size
        drop = config.data.drop_bad_labels  # validation data is always refused, never dropped
        train_sets = [build_dataset(s, self.data_dir, img_size, config.augment, drop) for s in config.data.train]
        self.train_set = MixedDataset(train_sets, [s.weight for s in config.data.train])
        self.prior = PosePrior([self.data_dir / p for p in config.data.prior], config.data.prior_frame_stride,
                               drop_bad_labels=drop)
        self.val_set = None
        if config.data.val is not None:
            val = build_dataset(config.data.val, self.data_dir, img_size, None)
            n = min(len(val), config.data.val_max_samples)
            self.val_set = torch.utils.data.Subset(val, range(n)) if n < len(val) else val

    def _setup_models(self, init) -> None:
        """The body model, HMR and the discriminator (from model.init's weights when given)."""
        model_cfg = config_to_dict(self.config)["model"]
        self.smpl = build_smpl(model_cfg)
        self.model = build_model(model_cfg, smpl=self.smpl, pretrained=init is None).to(self.device)
        self.discriminator = Discriminator().to(self.device)
        if init:
            self._init_weights(init)
        if self.device.type == "cuda" and self.config.train.channels_last:
            self.model.encoder.to(memory_format=torch.channels_last)

    def _setup_optimizers(self) -> None:
        oc = self.config.optim
        # The body model is fixed (smplx's layer registers placeholder parameters: not ours to train).
        trained = [p for name, p in self.model.named_parameters() if not name.startswith("smpl.")]
        self.e_opt = torch.optim.Adam(trained, lr=oc.encoder_lr, weight_decay=oc.encoder_weight_decay)
        self.d_opt = torch.optim.Adam(self.discriminator.parameters(), lr=oc.discriminator_lr,
                                      weight_decay=oc.discriminator_weight_decay)
        self.e_sched = StepDecay(self.e_opt, oc.lr_decay_steps, oc.lr_decay_gamma)
        self.d_sched = StepDecay(self.d_opt, oc.lr_decay_steps, oc.lr_decay_gamma)
        self.prior_generator = torch.Generator().manual_seed(self.config.train.seed * 1000 + self.rank)

    def _setup_training_modules(self) -> None:
        """What the steps call: the models, compiled and wrapped in DDP as the config asks."""
        if self.config.train.compile:
            self.model.encoder.compile()  # in place: state-dict keys stay the same
        self.train_model, self.train_disc = self.model, self.discriminator
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # SMPL's constant buffers need no broadcast each step (they never change);
            # BatchNorm statistics stay per process, rank 0's are checkpointed.
            with warnings.catch_warnings():  # newer torch renames broadcast_buffers; 2.11 lacks the new name
                warnings.simplefilter("ignore", FutureWarning)
                self.train_model = torch.nn.parallel.DistributedDataParallel(self.model, ids, broadcast_buffers=False)
            self.train_disc = torch.nn.parallel.DistributedDataParallel(self.discriminator, ids)

    def _restore_rng(self, states: list) -> None:
        if len(states) == self.world:
            set_rng_state(states[self.rank], self.device, self.prior_generator)
        else:
            log.warning("checkpoint has RNG states of %d processes, this run has %d: RNG reseeded",
                        len(states), self.world)

    # -- checkpoints ----------------------------------------------------------------------
    def _init_weights(self, path) -> None:
        """model.init: HMR weights (and the discriminator's, if saved) from another run or a
        packed checkpoint (float16 weights are cast to this model's dtype)."""
        try:
            ckpt = read_checkpoint(path)
            theirs = ckpt["config"].get("model", {})
            for key in ("backbone", "pose_repr", "ief_iters", "joint_set", "regressor"):
                if (theirs.get(key) or ("hmr" if key == "regressor" else None)) != getattr(self.config.model, key):
                    raise ValueError(f"{path} has model.{key}={theirs.get(key)!r}, this config "
                                     f"{getattr(self.config.model, key)!r}; they must match to fine-tune")
            load_weights(self.model, ckpt["model"], path, skip_prefix=SMPL_PREFIX)
            if "discriminator" in ckpt:
                load_weights(self.discriminator, ckpt["discriminator"], path)
        except (FileNotFoundError, ValueError) as exc:
            raise ConfigError(f"model.init: {exc}") from exc
        log.info("model.init: weights from %s (step %s)%s", path, ckpt.get("step"),
                 "" if "discriminator" in ckpt else "; it has no discriminator, which starts fresh")

    def _restore(self, ckpt: dict) -> None:
        missing = [k for k in ("discriminator", "optimizers", "schedulers", "step", "data", "rng") if k not in ckpt]
        if missing:
            raise CheckpointError(f"{self.out_dir / CHECKPOINT} cannot be resumed: it has no trainer state {missing} "
                                  "(a packed or exported checkpoint); start a new run from its weights with "
                                  "model.init=PATH instead")
        self.model.load_state_dict({**self.model.state_dict(), **ckpt["model"]})
        self.discriminator.load_state_dict(ckpt["discriminator"])
        self.e_opt.load_state_dict(ckpt["optimizers"]["encoder"])
        self.d_opt.load_state_dict(ckpt["optimizers"]["discriminator"])
        self.e_sched.load_state_dict(ckpt["schedulers"]["encoder"])
        self.d_sched.load_state_dict(ckpt["schedulers"]["discriminator"])
        self.step = int(ckpt["step"])
        self.batches_consumed = int(ckpt["data"]["batches_consumed"])
        self.skipped_images = int(ckpt["data"].get("skipped_images", 0))
        if self.spin is not None and "spin" in ckpt:  # a run that turns SPIN on later starts with no fits
            self.spin.load_state_dict(ckpt["spin"])

    def save(self) -> None:
        """RUN/last.pt; never with NaN/Inf weights: TrainingDiverged keeps the last good checkpoint."""
        if not self._weights_finite():
            raise self._diverged(f"the weights became NaN/Inf by step {self.step} (the losses were still finite)")
        states = [rng_state(self.device, self.prior_generator)]
        if self.world > 1:
            states = [None] * self.world
            dist.all_gather_object(states, rng_state(self.device, self.prior_generator))
            states = [{k: v.cpu() for k, v in s.items()} for s in states]
        if not self.is_main:
            return
        save_checkpoint(
            self.out_dir / CHECKPOINT, self.model, config_to_dict(self.config), step=self.step,
            discriminator=self.discriminator.state_dict(),
            optimizers={"encoder": self.e_opt.state_dict(), "discriminator": self.d_opt.state_dict()},
            schedulers={"encoder": self.e_sched.state_dict(), "discriminator": self.d_sched.state_dict()},
            rng=states,
            data={"batches_consumed": self.batches_consumed, "skipped_images": self.skipped_images},
            **({"spin": self.spin.state_dict()} if self.spin is not None else {}))
        self.saved_step = self.step

    def _weights_finite(self) -> bool:
        """All float weights and buffers (BatchNorm statistics too) finite: one host sync."""
        tensors = [t for m in (self.model, self.discriminator) for t in m.state_dict().values()
                   if t.is_floating_point()]
        return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())

    # -- one step -------------------------------------------------------------------------
    def autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, batch: dict) -> torch.Tensor:
        """One encoder step and one discriminator step; returns the losses (self.loss_names) on the device."""
        lc, dev = self.config.loss, self.device
        b = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        images = normalise_images(b["image"], b["color"])
        if dev.type == "cuda" and self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        self.model.train()
        self.discriminator.train()
        with self.autocast():
            out = self.train_model(images)
        kp = losses.keypoint_loss(out.keypoints2d, b["keypoints"])
        j3d = losses.joints3d_loss(out.joints3d, b["joints3d"], b["has_3d"])
        gt_rot_mats, gt_betas, has_smpl = rodrigues(b["pose"].view(-1, NUM_JOINTS, 3)), b["betas"], b["has_smpl"]
        spin_values = ()
        if self.spin is not None:  # SPIN: the kept fits supervise the samples without SMPL labels
            rows = spin_rows(b)
            fits = self.spin.targets(b, out.rot_mats.float(), out.betas.float(), out.cam.float(), rows)
            gt_rot_mats = torch.where(rows[:, None, None, None], fits.rot_mats, gt_rot_mats)
            gt_betas = torch.where(rows[:, None], fits.betas, gt_betas)
            has_smpl = torch.where(rows, fits.used.to(has_smpl.dtype), has_smpl)
            spin_values = tuple(self.spin.log_values(fits, rows))
        smpl = losses.smpl_loss(out.rot_mats, out.betas, gt_rot_mats, gt_betas, has_smpl)
        e_loss = lc.keypoint_weight * kp + lc.joints3d_weight * j3d + lc.smpl_weight * smpl
        adversarial = lc.adversarial_weight > 0 and self.step >= self.config.train.adversarial_start
        # The discriminator judges every IEF iteration's pose and shape (HMR's fake set).
        fake_rot = out.iter_rot_mats[:, :, 1:].flatten(0, 1)
        fake_betas = out.iter_betas.flatten(0, 1)
        adv = torch.zeros((), device=dev)
        if adversarial:
            # The bare module, not DDP: this pass only carries gradients to the encoder.
            adv = lsgan_generator_loss(self.discriminator(fake_rot, fake_betas))
            e_loss = e_loss + lc.adversarial_weight * adv
        self.e_opt.zero_grad(set_to_none=True)
        e_loss.backward()
        self._clip(self.e_opt.param_groups[0]["params"])
        self.e_opt.step()
        self.e_sched.step()

        d_real = d_fake = torch.zeros((), device=dev)
        if adversarial:
            real_pose, real_betas = self.prior.sample(fake_rot.shape[0], self.prior_generator)
            real_rot = rodrigues(real_pose.to(dev).view(-1, NUM_JOINTS, 3))[:, 1:]
            # Real and fake through one call, so DDP sees one forward per backward.
            scores = self.train_disc(torch.cat([real_rot, fake_rot.detach()]),
                                     torch.cat([real_betas.to(dev), fake_betas.detach()]))
            d_real, d_fake = lsgan_discriminator_loss(*scores.split([real_rot.shape[0], fake_rot.shape[0]]))
            self.d_opt.zero_grad(set_to_none=True)
            (lc.adversarial_weight * (d_real + d_fake)).backward()
            self._clip(self.discriminator.parameters())
            self.d_opt.step()
        self.d_sched.step()
        return torch.stack([e_loss, kp, j3d, smpl, adv, d_real, d_fake, *spin_values]).detach().float()

    def _clip(self, params) -> None:
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.config.optim.grad_clip)

    # -- evaluation and logging -----------------------------------------------------------
    def evaluate(self) -> dict:
        if self.val_set is None or not self.is_main:
            return {}
        loader = make_eval_loader(self.val_set, max(1, self.batch_size), min(2, self.config.data.num_workers))
        metrics = evaluate_model(self.model, loader, self.device, amp=self.amp)
        return {f"eval/{k}": v for k, v in metrics.items()}

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        with open(self.out_dir / METRICS, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.purge_step)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, record["step"])
        self.writer.flush()

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train to train.steps (or train.time_limit_minutes); returns the last logged record."""
        from tqdm import tqdm

        tc = self.config.train
        deadline = time.monotonic() + 60 * tc.time_limit_minutes if tc.time_limit_minutes > 0 else math.inf
        sums, count, wait, busy = None, 0, 0.0, 0.0
        last = {}
        bar = tqdm(total=tc.steps, initial=self.step, disable=not self.is_main, dynamic_ncols=True,
                   mininterval=1.0, desc="train")
        self._bar = bar
        if not hasattr(self, "saved_step"):  # the checkpoint a divergence keeps: a resumed run's own
            self.saved_step = self.step if (self.out_dir / CHECKPOINT).is_file() else None
        # The first step whose losses were NaN/Inf (NO_BAD_STEP: none), kept on the device and
        # read when a log line or a checkpoint is due: no host sync per step.
        first_bad = torch.full((), NO_BAD_STEP, dtype=torch.int64, device=self.device)
        first_record = True
        t_log = time.perf_counter()
        while self.step < tc.steps:
            t0 = time.perf_counter()
            batch = next(self.batches)
            t1 = time.perf_counter()
            values = self.train_step(batch)
            t2 = time.perf_counter()
            self.step += 1
            self.batches_consumed += 1
            self.skipped_images += int(batch["skipped"].sum())
            # Losses stay on the device until a log line needs them: no host sync per step.
            sums = values if sums is None else sums + values
            bad = (~torch.isfinite(values).all()).long()
            first_bad = torch.minimum(first_bad, NO_BAD_STEP - bad * (NO_BAD_STEP - self.step))
            wait, busy, count = wait + t1 - t0, busy + t2 - t1, count + 1
            bar.update(1)
            final = self.step == tc.steps or time.monotonic() > deadline
            log_due = self.step % tc.log_every == 0 or final
            diverged = self._first_bad_step(first_bad) if log_due or self.step % tc.checkpoint_every == 0 else None
            if log_due:
                elapsed = time.perf_counter() - t_log
                record = {"step": self.step, **dict(zip(self.loss_names, (sums / count).cpu().tolist())),
                          "images_per_s": count * tc.batch_size / max(elapsed, 1e-9),
                          "data_wait_frac": wait / max(wait + busy, 1e-9),
                          "lr/encoder": self.e_opt.param_groups[0]["lr"],
                          "skipped_images": self.skipped_images}
                if first_record:  # samples / prior frames that data.drop_bad_labels left out
                    record["data/dropped_bad_labels"] = self._dropped_bad_labels()
                    first_record = False
                if self.device.type == "cuda":
                    record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
                self.log(record)
                bar.set_postfix({"loss": f"{record['loss/total']:.3f}", "kp": f"{record['loss/keypoints']:.3f}",
                                 "img/s": f"{record['images_per_s']:.0f}"})
                last = record
                sums, count, wait, busy = None, 0, 0.0, 0.0
            if diverged is not None:  # before any evaluation or checkpoint of the broken weights
                start = (diverged - 1) // tc.log_every * tc.log_every + 1
                end = min(start + tc.log_every - 1, self.step)
                interval = f", in the log interval of steps {start}-{end}" if end > start else ""
                raise self._diverged(f"the loss became NaN/Inf at step {diverged}{interval}")
            if self.step % tc.eval_every == 0 or final:
                metrics = self.evaluate()
                if metrics:
                    self.log({"step": self.step, **metrics})
                    last.update(metrics)
                    bar.write(f"step {self.step}: " + "  ".join(f"{k[5:]} {v:.4g}" for k, v in metrics.items()))
            if self.step % tc.checkpoint_every == 0 or final:
                self.save()
            if count == 0:  # a log line was just written: time the next interval from here,
                t_log = time.perf_counter()  # so evaluation and checkpoints don't count as training
            if final:
                break
        bar.close()
        if self.writer is not None:
            self.writer.close()
        return last

    def _first_bad_step(self, first_bad: torch.Tensor):
        """The first step (over all processes) whose losses were NaN/Inf, or None: one host sync."""
        if self.world > 1:
            dist.all_reduce(first_bad, op=dist.ReduceOp.MIN)
        step = int(first_bad)
        return None if step >= NO_BAD_STEP else step

    def _dropped_bad_labels(self) -> int:
        """Training samples and prior frames left out for bad labels (data.drop_bad_labels)."""
        return sum(getattr(d, "dropped", 0) for d in self.train_set.datasets) + getattr(self.prior, "dropped", 0)

    def _diverged(self, what: str) -> TrainingDiverged:
        """The error that stops a diverged run (the bar and TensorBoard closed first)."""
        if getattr(self, "_bar", None) is not None:
            self._bar.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        saved = getattr(self, "saved_step", None)
        kept = (f"{self.out_dir / CHECKPOINT} (step {saved}) was kept, not overwritten" if saved is not None
                else f"no checkpoint was written (none was due by step {self.step})")
        oc = self.config.optim
        clip = f"now {oc.grad_clip:g}" if oc.grad_clip > 0 else "now off"
        return TrainingDiverged(f"training diverged: {what}; {kept}. Try a lower optim.encoder_lr (now "
                                f"{oc.encoder_lr:g}), gradient clipping with optim.grad_clip (e.g. 1.0; {clip}), "
                                "and check the data")


# ---------------------------------------------------------------------------------------
# `hmr-fast train`
# ---------------------------------------------------------------------------------------
def add_arguments(parser) -> None:
    parser.add_argument("--config", help="a YAML config file, or a packaged config by name (synthetic_smoke, synthetic, "
                        "hmr_paper); with --resume, the run's own")
    parser.add_argument("--data", required=True, help="data folder the config's relative paths start from")
    parser.add_argument("--out", required=True, help="run folder: checkpoint, metrics, TensorBoard logs")
    parser.add_argument("--steps", type=int, help="total steps (overrides train.steps)")
    parser.add_argument("--device", choices=DEVICES, help="overrides train.device")
    parser.add_argument("--resume", action="store_true", help="continue RUN/last.pt exactly")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.batch_size=32")


def build_config(args) -> Config:
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.device is not None:
        overrides.append(f"train.device={args.device}")
    if args.resume:
        path = Path(args.out) / CHECKPOINT
        if not path.is_file():
            raise FileNotFoundError(f"--resume: {path} not found")
        saved = read_checkpoint(path)["config"]
        return config_from_dict(apply_overrides(saved, overrides))
    if args.config is None:
        raise ConfigError("--config is required (except with --resume)")
    return load_config(args.config, overrides)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = build_config(args)
    trainer = Trainer(config, args.data, args.out, resume=args.resume)
    t0 = time.perf_counter()
    last = trainer.fit()
    if trainer.is_main:
        summary = {k: round(v, 5) if isinstance(v, float) else v for k, v in last.items()}
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(summary))
    if os.environ.get(WEIGHTS_DIGEST_ENV):
        _write_weights_digest(trainer, Path(os.environ[WEIGHTS_DIGEST_ENV]))
    if trainer.world > 1:
        dist.destroy_process_group()
    return 0


def weights_digest(model_state: dict, discriminator_state: dict) -> str:
    """sha256 over the trained parameters' bytes (not BatchNorm statistics: DDP keeps those per
    process): equal digests, equal weights."""
    import hashlib

    h = hashlib.sha256()
    for prefix, state in (("model.", model_state), ("discriminator.", discriminator_state)):
        for name in sorted(state):
            if "running_" in name or name.endswith("num_batches_tracked") or name.startswith("smpl."):
                continue
            h.update((prefix + name).encode())
            h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write_weights_digest(trainer: Trainer, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    digest = weights_digest(trainer.model.state_dict(), trainer.discriminator.state_dict())
    (folder / f"rank{trainer.rank}.json").write_text(json.dumps({"rank": trainer.rank, "world": trainer.world,
                                                                  "step": trainer.step, "weights": digest}))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmr_fast.training.train", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
