"""SMPL: model files, the built-in mannequin, joint sets and the SMPL layer."""
from .model_data import SMPL_JOINT_NAMES, SMPL_PARENTS, SMPLModelData
from .model_file import ModelFileError, UnsafePickleError, load_model_file, validate_model_data
from .smpl import SMPL, SMPLOutput

__all__ = ["SMPL", "SMPLOutput", "SMPLModelData", "SMPL_JOINT_NAMES", "SMPL_PARENTS", "load_model_file",
           "validate_model_data", "ModelFileError", "UnsafePickleError"]
