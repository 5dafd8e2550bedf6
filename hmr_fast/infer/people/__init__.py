"""Every person in photographs and videos: one place for the people pipeline.

    detector.py  people and their COCO keypoints (MoveNet MultiPose, tiled for crowds, a
                 second look at each person alone; optical flow between detections)
    tracking.py  who is who from frame to frame (videos)
    stages.py    what photos and videos share, person by person: crops, HMR, the fit's
                 start (HMR's or the learned one from keypoints), the fit, the drawn meshes,
                 the npz rows
    video.py     `hmr-fast video --people all`
    images.py    `hmr-fast images`: each photograph on its own, each fit to convergence
    metrics.py   recall, precision, identity switches and keypoint errors against truth
"""
from .detector import DetectEvery, MoveNetMultiPose, PersonDetection

__all__ = ["DetectEvery", "MoveNetMultiPose", "PersonDetection"]
