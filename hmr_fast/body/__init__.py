"""SMPL: model files, the built-in mannequin, joint sets and the SMPL layer."""
from .model_data import SMPL_JOINT_NAMES, SMPL_PARENTS, SMPLModelData
from .smpl import SMPL, SMPLOutput


def load_model_file(path, gender: str = "neutral") -> SMPLModelData:
    """Load an official SMPL .pkl, a smplx-style .npz or a smplx-layout folder (see model_file.py)."""
    from .model_file import load_model_file as _load

    return _load(path, gender=gender)


__all__ = ["SMPL", "SMPLOutput", "SMPLModelData", "SMPL_JOINT_NAMES", "SMPL_PARENTS", "load_model_file"]
