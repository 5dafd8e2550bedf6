"""HMR: the encoder, the IEF regressor, the discriminator, the inference graph, and checkpoints."""
from .checkpoint import build_model, build_smpl, load_checkpoint, read_checkpoint, save_checkpoint
from .discriminator import Discriminator, lsgan_discriminator_loss, lsgan_generator_loss
from .encoder import Encoder
from .hmr import HMR, HMROutput
from .inference import OUTPUT_NAMES, InferenceModel
from .regressor import IEFRegressor, initial_theta

__all__ = ["HMR", "HMROutput", "Encoder", "IEFRegressor", "Discriminator", "InferenceModel", "OUTPUT_NAMES",
           "initial_theta", "lsgan_discriminator_loss", "lsgan_generator_loss", "save_checkpoint",
           "load_checkpoint", "read_checkpoint", "build_model", "build_smpl"]
