"""HMR: the encoder, the IEF regressor, the discriminator, and checkpoints."""
from .checkpoint import build_model, build_smpl, load_checkpoint, read_checkpoint, save_checkpoint
from .discriminator import Discriminator, lsgan_discriminator_loss, lsgan_generator_loss
from .encoder import Encoder
from .hmr import HMR, HMROutput, fused_smpl_kernel, smpl_joints_projected
from .regressor import IEFRegressor, initial_theta

__all__ = ["HMR", "HMROutput", "Encoder", "IEFRegressor", "Discriminator", "initial_theta",
           "lsgan_discriminator_loss", "lsgan_generator_loss", "smpl_joints_projected", "fused_smpl_kernel",
           "save_checkpoint", "load_checkpoint", "read_checkpoint", "build_model", "build_smpl"]
