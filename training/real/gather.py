#!/usr/bin/env python
"""Rebuild /work/realdata/train: real photos and video frames of people for
self-training (pseudo-labels from the project's own detector + fit).

No labels are shipped: the material is unannotated.  The media are NOT part of
this repository (see training/real/MANIFEST.md for sources, licences, what each
item shows and the exclusions checked).  This script only reads blobs from bare
git directories (as returned by the session's ``fetch`` tool, e.g.
``/work/.mirror/Arthur151+ROMP/repo``) with ``git --git-dir=... show
COMMIT:path`` at pinned commits and writes

    OUT/photos/<source>_<stem>.<ext>              photos, bytes copied as-is
    OUT/frames/<source>_<stem>_<frame:05d>.jpg    every k-th frame of a video
                                                  (OpenCV decode, JPEG q=95)
    OUT/MANIFEST.json                             every output file: source repo,
                                                  commit, path, licence, sha256 of
                                                  the source blob and of the file,
                                                  frame index, rough people count

Usage:
    python training/real/gather.py [--mirror-root /work/.mirror] [--out /work/realdata/train]
        [--git owner/name=/path/to/git/dir ...] [--heldout /work/realdata]

``--mirror-root`` holds one ``owner+name/repo`` git directory per repository
(bare, or a work tree with ``.git``); ``--git`` overrides single repositories.
A snapshot lacking the pinned commit is an error.

Determinism: items, frame indices and output names are fixed below; photos are
byte copies (their sha256 equals the source blob's).  Frames depend on the
video decoder and JPEG encoder of the installed OpenCV (recorded in
MANIFEST.json as ``opencv``); with the same build the bytes are identical.
Near-black frames (mean intensity < 8: fades) are skipped and listed.

Exclusions (asserted here): no COCO-named file (COCO_*, 12-digit ids), no path
of an evaluation set (COCO, OCHuman, CrowdPose, 3DPW, Human3.6M, MPI-INF-3DHP,
OpenCV samples, MOT16/17-03, LSP test images, LSPET, Bonn PoseTrack), nothing
from a repository or path the held-out set (benchmarks/real/MANIFEST.md) uses,
and no source blob whose sha256 equals a file of the held-out set under
``--heldout`` (default /work/realdata, the ``train`` folder itself skipped).
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

# repo -> (licence of the repository, short source tag)
REPOS = {
    "Arthur151/ROMP": "Apache-2.0",
    "shubham-goel/4D-Humans": "MIT",
    "MVIG-SJTU/AlphaPose": "AlphaPose licence: academic / non-commercial research only",
    "ildoonet/tf-pose-estimation": "Apache-2.0",
    "Hzzone/pytorch-openpose": "none stated (no LICENSE file)",
    "facebookresearch/pifuhd": "CC BY-NC 4.0",
    "CMU-Perceptual-Computing-Lab/openpose": "OpenPose licence: academic / non-commercial research only",
    "ultralytics/yolov5": "AGPL-3.0",
    "WongKinYiu/yolov7": "GPL-3.0",
    "pjreddie/darknet": "YOLO licence v2 (public-domain style)",
    "Megvii-BaseDetection/YOLOX": "Apache-2.0",
    "facebookresearch/Detectron": "Apache-2.0",
    "akanazawa/hmr": "MIT (code; datasets under their own terms)",
    "ZheC/Realtime_Multi-Person_Pose_Estimation": "OpenPose licence: academic / non-commercial research only",
    "mks0601/Hand4Whole_RELEASE": "MIT",
    "shunsukesaito/PIFu": "MIT",
    "open-mmlab/mmpose": "Apache-2.0",
    "YuliangXiu/ECON": "MPI non-commercial scientific research licence",
    "YuliangXiu/ICON": "MPI non-commercial scientific research licence",
    "lllyasviel/ControlNet": "Apache-2.0",
    "IDEA-Research/DWPose": "Apache-2.0",
    "hkchengrex/Cutie": "MIT",
    "Tencent/MimicMotion": "Apache-2.0 (Tencent notice)",
    "vita-epfl/monoloco": "AGPL-3.0",
    "openpifpaf/openpifpaf": "AGPL-3.0",
    "tensorflow/tfjs-models": "Apache-2.0",
    "google/mediapipe": "Apache-2.0",
    "open-mmlab/mmaction2": "Apache-2.0",
    "open-mmlab/mmhuman3d": "Apache-2.0",
    "HongwenZhang/PyMAF": "CC BY-NC 3.0",
    "Jeff-sjtu/HybrIK": "MIT",
    "brjathu/PHALP": "MIT",
    "haofanwang/CLIFF": "Apache-2.0",
    "facebookresearch/sam2": "Apache-2.0",
    "facebookresearch/co-tracker": "CC BY-NC 4.0",
    "intel-iot-devkit/sample-videos": "CC BY 4.0",
}

H = {  # HEAD commits of the snapshots used (pinned)
    "Arthur151/ROMP": "a8558aed480af850756f84e2a7c787e359bddbd0",
    "shubham-goel/4D-Humans": "6ec79656a23c33237c724742ca2a0ec00b398b53",
    "MVIG-SJTU/AlphaPose": "c60106d19afb443e964df6f06ed1842962f5f1f7",
    "ildoonet/tf-pose-estimation": "9aaf34708e9863eeab9685a7ec52a45f3b576e2d",
    "Hzzone/pytorch-openpose": "5ee71dc10020403dc3def2bb68f9b77c40337ae2",
    "facebookresearch/pifuhd": "e47c4d918aaedd5f5608192b130bda150b1fb0ab",
    "CMU-Perceptual-Computing-Lab/openpose": "5c5d96523ef917bd30301245fdc8343937cae48d",
    "ultralytics/yolov5": "5081342f04fb287fc2e5f2b5a4e06752b7937b1c",
    "WongKinYiu/yolov7": "a207844b1ce82d204ab36d87d496728d3d2348e7",
    "pjreddie/darknet": "f6afaabcdf85f77e7aff2ec55c020c0e297c77f9",
    "Megvii-BaseDetection/YOLOX": "6ddff4824372906469a7fae2dc3206c7aa4bbaee",
    "facebookresearch/Detectron": "04155a01a6ea68f22ac27c79a822066457941ece",
    "akanazawa/hmr": "f149abeb0a7e2a3412eb68274a94a9232f7cb667",
    "ZheC/Realtime_Multi-Person_Pose_Estimation": "de8d6984f2c10b6e0230de63dfdcf52ef3376b57",
    "mks0601/Hand4Whole_RELEASE": "c94908654b8108f241f18f04b4a493c05137edf6",
    "shunsukesaito/PIFu": "f0a9c99ef887e1eb360e865a87aa5f166231980e",
    "open-mmlab/mmpose": "759b39c13fea6ba094afc1fa932f51dc1b11cbf9",
    "YuliangXiu/ECON": "d8f4e8b7171e30868acd94a1d1f6fcc1238e3e32",
    "YuliangXiu/ICON": "cf46a6b6ff5a0073268db9e27a259ae2de41bc59",
    "lllyasviel/ControlNet": "ed85cd1e25a5ed592f7d8178495b4483de0331bf",
    "IDEA-Research/DWPose": "3dca5db79d9f9ffdd378753ddf6ec66535aace88",
    "hkchengrex/Cutie": "ec5cdd4cf16f75c73ad785a2f96fb97dbad4125a",
    "Tencent/MimicMotion": "62f91e1f4ab750e1ab0d96c08f2d199b6e84e8b1",
    "vita-epfl/monoloco": "f5e82c48e8ee5af352f2c9b1690050f4e02fc1b6",
    "openpifpaf/openpifpaf": "37aacead57597b25f027647fcade3755cd2769ee",
    "tensorflow/tfjs-models": "18a73420e555a3c1948209ebfa807c7086c7ff0c",
    "google/mediapipe": "9d8807788567c01dbd998c0a3d0f730b9686912d",
    "open-mmlab/mmaction2": "4d6c93474730cad2f25e51109adcf96824efc7a3",
    "open-mmlab/mmhuman3d": "8c95747175f8c4bd76d5e0be7be244f8a9a4a6de",
    "HongwenZhang/PyMAF": "c866830ae506e423a4349537b692f68b98cbb091",
    "Jeff-sjtu/HybrIK": "9b8681dcf3c902dd5dacc01520ba04982990e1e2",
    "brjathu/PHALP": "96f7e6c09fb858ec3f597d59246c151ab4394bc3",
    "haofanwang/CLIFF": "f38cad87cb9df34bf377129f9e5ebaaae54af51a",
    "facebookresearch/sam2": "2b90b9f5ceec907a1c18123530e92e794ad901a4",
    "facebookresearch/co-tracker": "82e02e8029753ad4ef13cf06be7f4fc5facdda4d",
    "intel-iot-devkit/sample-videos": "57978890822836f2b4743852f04f62fc511757e4",
}

# Fields: source tag, repo, commit (None = the pinned HEAD above), path,
#   step (None = photo; k = every k-th video frame from frame 0),
#   people (rough count per image / per kept frame), scene, media licence note,
#   optional stem override.
WEB = "unclear (web image used as a demo)"
ITEMS = [
    # --- ROMP / BEV demo material (HEAD, earlier commits, and the repository's own `assets` branch)
    ("romp", "Arthur151/ROMP", None, "demo/images/Cristiano_Ronaldo.jpg", None, 5, "football broadcast, outdoor", "unclear (TV broadcast frame)"),
    ("romp", "Arthur151/ROMP", None, "demo/images/Leo_Messi.jpg", None, 3, "football broadcast, outdoor", "unclear (TV broadcast frame)"),
    ("romp", "Arthur151/ROMP", "505dd3b84325c3067b091fa7a7d5379856fd4cdc", "demo/images/Cristiano_Ronaldo2.jpg", None, 4, "football broadcast, outdoor", "unclear (TV broadcast frame)"),
    ("romp", "Arthur151/ROMP", "5712dc42ae77a6ff178128c891f5f60a91c1ad77", "demo/images/person_overlap.jpg", None, 2, "two workers, one crouching, outdoor", WEB),
    ("romp", "Arthur151/ROMP", "9308814c6b66fc56440915f3da7c9d0cb1a433b9", "demo/BEV_demo_images/637168518940300000.jpg", None, 40, "large standing group photo, outdoor", WEB),
    ("romp", "Arthur151/ROMP", "9308814c6b66fc56440915f3da7c9d0cb1a433b9", "demo/BEV_demo_images/Solvay_conference_1927_all_people.jpg", None, 29, "Solvay conference 1927 group photo (b/w), seated + standing", "public domain (1927 photograph)"),
    ("romp", "Arthur151/ROMP", "9308814c6b66fc56440915f3da7c9d0cb1a433b9", "demo/BEV_demo_images/TennisLessonsHongKong.jpg", None, 25, "children's tennis group photo, outdoor", WEB),
    ("romp", "Arthur151/ROMP", "9308814c6b66fc56440915f3da7c9d0cb1a433b9", "demo/BEV_demo_images/pexels-photo-3556662.jpeg", None, 10, "children and adults standing in a row, outdoor", "Pexels licence (free use)"),
    ("romp", "Arthur151/ROMP", "63695e2105bad01afb61e1f5a4908a7c4e7d5b7e", "demo/videos/sample_video.mp4", 10, 4, "football broadcast, 1280x720, 257 frames @30", "unclear (TV broadcast)"),
    ("romp", "Arthur151/ROMP", "d6105553adaecaeefaa055a4cef14d476d74eb90", "demo/videos/sample_video2.mp4", 15, 1, "dancer, studio, full body, 1920x1080, 300 frames @30", WEB),
    # --- 4D-Humans
    ("4dhumans", "shubham-goel/4D-Humans", None, "example_data/images/pexels-anete-lusina-4793258.jpg", None, 1, "man lunging with barbell, outdoor, 4016x6016", "Pexels licence (free use)"),
    ("4dhumans", "shubham-goel/4D-Humans", None, "example_data/images/skates.png", None, 12, "synchronized skating team, ice rink", WEB),
    # --- AlphaPose (QC.jpg and video1.mp4: commits only on upstream pull-request refs)
    ("alphapose", "MVIG-SJTU/AlphaPose", None, "examples/demo/1.jpg", None, 6, "skiers on snow, outdoor", WEB),
    ("alphapose", "MVIG-SJTU/AlphaPose", None, "examples/demo/2.jpg", None, 5, "children sitting on a bench against a brick wall", WEB),
    ("alphapose", "MVIG-SJTU/AlphaPose", None, "examples/demo/3.jpg", None, 20, "crowded shopping street, outdoor", WEB),
    ("alphapose", "MVIG-SJTU/AlphaPose", "7a0299677f71653f4de00b36b6edae96d9b072f3", "examples/demo/QC.jpg", None, 1, "man standing, indoor, full body", "unclear (unmerged pull request #1129)"),
    ("alphapose", "MVIG-SJTU/AlphaPose", "90c950851a998d8c5456d2062301f400d248d828", "sddownload/video1.mp4", 10, 1, "breakdancer, outdoor, 1280x720, 176 frames @30", "unclear (unmerged pull request #935)"),
    # --- tf-pose-estimation (images/ used by its README)
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/apink1.jpg", None, 1, "singer on stage, full body", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/apink2.jpg", None, 6, "girl group in school uniforms, indoor set", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/apink3.jpg", None, 6, "girl group seated on stage", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/golf.jpg", None, 1, "golfer swinging, outdoor", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/handsup1.jpg", None, 5, "crowd with hands up, night", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/p1.jpg", None, 1, "man kicking a ball, small image", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/p2.jpg", None, 2, "two men in suits seated, indoor", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/p3.jpg", None, 3, "three astronauts, portrait", "likely NASA (public domain)"),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/p3_dance.png", None, 3, "three dancers, studio", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/ski.jpg", None, 5, "roller skater in front, onlookers, outdoor", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/valid_person1.jpg", None, 1, "person at a sink seen from above, partly visible", WEB),
    ("tfpose", "ildoonet/tf-pose-estimation", None, "images/hand1.jpg", None, 1, "man waving, upper body", WEB),
    # --- pytorch-openpose
    ("ptopenpose", "Hzzone/pytorch-openpose", None, "images/demo.jpg", None, 1, "tennis player waving, upper body", WEB),
    ("ptopenpose", "Hzzone/pytorch-openpose", "0f41c27b414de5ac4a89af65d946e3c7c308737f", "images/person.jpg", None, 1, "man standing, white background, full body", "unclear (unmerged pull request #14; stock-style photo)"),
    # --- PIFuHD / PIFu
    ("pifuhd", "facebookresearch/pifuhd", None, "sample_images/test.png", None, 2, "man standing (full body), b/w poster behind", WEB),
    ("pifu", "shunsukesaito/PIFu", None, "sample_images/ryota.png", None, 1, "man standing, black background, full body", "unclear (author photo)"),
    # --- OpenPose
    ("openpose", "CMU-Perceptual-Computing-Lab/openpose", None, "examples/media/video.avi", 10, 12, "pedestrian street, outdoor, 1280x720, 205 frames @50", "OpenPose licence: non-commercial research"),
    # --- YOLO family
    ("yolov5", "ultralytics/yolov5", None, "data/images/bus.jpg", None, 4, "people walking by a bus, street", "unclear (Ultralytics demo image)"),
    ("yolov5", "ultralytics/yolov5", None, "data/images/zidane.jpg", None, 2, "two men in suits, upper body", "unclear (press photo)"),
    ("yolov7", "WongKinYiu/yolov7", None, "inference/images/image1.jpg", None, 2, "two people (bride/groom style), indoor", WEB),
    ("yolov7", "WongKinYiu/yolov7", None, "inference/images/image2.jpg", None, 3, "women's football, outdoor", WEB),
    ("darknet", "pjreddie/darknet", None, "data/person.jpg", None, 1, "woman with dog and horse, field", WEB),
    ("darknet", "pjreddie/darknet", None, "data/kite.jpg", None, 8, "beach with kite flyers, small people", WEB),
    ("yolox", "Megvii-BaseDetection/YOLOX", None, "assets/sunjian.png", None, 1, "portrait, upper body (b/w)", "unclear (portrait photo)"),
    # --- Detectron demo images (Flickr '_k' images)
    ("detectron", "facebookresearch/Detectron", None, "demo/15673749081_767a7fa63a_k.jpg", None, 10, "pier with spectators, small people, outdoor", "Flickr image, licence unclear"),
    ("detectron", "facebookresearch/Detectron", None, "demo/16004479832_a748d55f21_k.jpg", None, 2, "legs of people with a service dog, indoor", "Flickr image, licence unclear"),
    ("detectron", "facebookresearch/Detectron", None, "demo/17790319373_bd19b24cfc_k.jpg", None, 4, "street with cart pusher and riders", "Flickr image, licence unclear"),
    ("detectron", "facebookresearch/Detectron", None, "demo/24274813513_0cfd2ce6d0_k.jpg", None, 10, "people walking on a wide road, far", "Flickr image, licence unclear"),
    ("detectron", "facebookresearch/Detectron", None, "demo/33823288584_1d21cf0a26_k.jpg", None, 10, "cyclists and spectators, outdoor", "Flickr image, licence unclear"),
    # --- HMR family
    ("hmr", "akanazawa/hmr", None, "data/random.jpg", None, 2, "two people on a rock, arms up, outdoor", WEB),
    ("zhec", "ZheC/Realtime_Multi-Person_Pose_Estimation", None, "testing/sample_image/upper.jpg", None, 1, "woman with dumbbells, upper body", WEB),
    ("zhec", "ZheC/Realtime_Multi-Person_Pose_Estimation", None, "testing/sample_image/upper2.jpg", None, 2, "fitness couple, upper body", WEB),
    ("hand4whole", "mks0601/Hand4Whole_RELEASE", None, "demo/input.png", None, 1, "man seated with a large plush bear, bar", WEB),
    ("mmpose", "open-mmlab/mmpose", None, "projects/rtmpose/examples/onnxruntime/human-pose.jpeg", None, 1, "skier, full body", WEB),
    ("mmpose", "open-mmlab/mmpose", None, "tests/data/deepfasion2/000264.jpg", None, 1, "mirror selfie, torso (DeepFashion2 sample)", "DeepFashion2: research-only"),
    ("mmpose", "open-mmlab/mmpose", None, "tests/data/deepfasion2/000265.jpg", None, 1, "mirror selfie, torso (DeepFashion2 sample)", "DeepFashion2: research-only"),
    ("mmpose", "open-mmlab/mmpose", None, "tests/data/wflw/36_Football_americanfootball_ball_36_415.jpg", None, 3, "american football training (WIDER FACE image)", "WIDER FACE: research-only / unclear"),
    ("mmpose", "open-mmlab/mmpose", None, "tests/data/wflw/7_Cheering_Cheering_7_16.jpg", None, 20, "cheering crowd (WIDER FACE image)", "WIDER FACE: research-only / unclear"),
    ("mmpose", "open-mmlab/mmpose", None, "tests/data/fld/img_00000128.jpg", None, 1, "fashion model, full body, small (DeepFashion FLD)", "DeepFashion: research-only"),
    # --- ControlNet / DWPose test images (real photos only)
    ("controlnet", "lllyasviel/ControlNet", None, "test_imgs/boy.png", None, 1, "man in coat, upper body, street", WEB),
    ("controlnet", "lllyasviel/ControlNet", None, "test_imgs/human.png", None, 1, "man touching hair, upper body", WEB),
    ("controlnet", "lllyasviel/ControlNet", None, "test_imgs/pose2.png", None, 1, "man in long coat, full body", WEB),
    ("dwpose", "IDEA-Research/DWPose", None, "ControlNet-v1-1-nightly/test_imgs/m2.jpg", None, 1, "man in patterned shirt, 3/4 body, beach", WEB),
    ("dwpose", "IDEA-Research/DWPose", None, "ControlNet-v1-1-nightly/test_imgs/city.jpg", None, 60, "Shibuya crossing at night, crowd", WEB),
    # --- Cutie (VOS) examples
    ("cutie", "hkchengrex/Cutie", None, "examples/images/judo/00000.jpg", None, 8, "judo hall, two fighters + onlookers", "unclear (DAVIS-style clip)", "judo_00000"),
    ("cutie", "hkchengrex/Cutie", None, "examples/images/judo/00005.jpg", None, 8, "judo hall, two fighters + onlookers", "unclear (DAVIS-style clip)", "judo_00005"),
    ("cutie", "hkchengrex/Cutie", None, "examples/images/judo/00010.jpg", None, 8, "judo hall, two fighters + onlookers", "unclear (DAVIS-style clip)", "judo_00010"),
    ("cutie", "hkchengrex/Cutie", None, "examples/images/judo/00015.jpg", None, 8, "judo hall, two fighters + onlookers", "unclear (DAVIS-style clip)", "judo_00015"),
    ("cutie", "hkchengrex/Cutie", None, "examples/images/bike/00000.jpg", None, 1, "BMX rider, outdoor", "unclear (DAVIS-style clip)", "bike_00000"),
    ("cutie", "hkchengrex/Cutie", None, "examples/example.mp4", 10, 1, "singer in a trench coat (music video), 640x480, 117 frames @25", "unclear (music video excerpt)"),
    # --- misc photos
    ("mimicmotion", "Tencent/MimicMotion", None, "assets/example_data/images/demo1.jpg", None, 1, "woman standing, full body, indoor", WEB),
    ("monoloco", "vita-epfl/monoloco", None, "docs/raising_hand.jpg", None, 1, "woman raising hand with suitcase, street", WEB),
    ("monoloco", "vita-epfl/monoloco", None, "docs/frame0032.jpg", None, 15, "pedestrians on a campus path", "unclear (own recording)"),
    ("openpifpaf", "openpifpaf/openpifpaf", None, "guide/images/peterbourg.jpg", None, 6, "city street with pedestrians, small people", "unclear"),
    ("openpifpaf", "openpifpaf/openpifpaf", None, "guide/wholebody/soccer.jpeg", None, 2, "two footballers, full body", WEB),
    ("openpifpaf", "openpifpaf/openpifpaf", "2de59a8a5b5394da96ba9f735e516b5a72ae8924", "docs/crowd.png", None, 80, "dense street crowd", WEB),
    ("openpifpaf", "openpifpaf/openpifpaf", "f692c2514557f50f2335301f7d47280e810c2d39", "docs/mochit_station_example.jpg", None, 30, "crowded station entrance", WEB),
    ("tfjs", "tensorflow/tfjs-models", None, "pose-detection/test_data/pose.jpg", None, 1, "yoga pose on a beach, full body", WEB),
    ("tfjs", "tensorflow/tfjs-models", None, "body-segmentation/test_data/portrait.jpg", None, 1, "official portrait, 3/4 body", "likely US government work (public domain)"),
    ("tfjs", "tensorflow/tfjs-models", None, "pose-detection/test_data/pose_1.mp4", 8, 1, "woman dancing in a room, 576x576, 120 frames @30", "unclear (test clip)"),
    ("tfjs", "tensorflow/tfjs-models", None, "pose-detection/test_data/pose_squats.mp4", 3, 1, "woman doing squats, full body, 720x1280, 65 frames @5", "unclear (test clip)"),
    # --- action / mesh / tracking demo videos
    ("mmaction2", "open-mmlab/mmaction2", None, "demo/demo.mp4", 20, 2, "arm wrestling (Kinetics-style clip), 340x256, 280 frames", "unclear (YouTube clip)"),
    ("mmaction2", "open-mmlab/mmaction2", None, "demo/demo_skeleton.mp4", 6, 2, "two men interacting, indoor, 1920x1080, 72 frames", "unclear"),
    ("mmaction2", "open-mmlab/mmaction2", None, "demo/test_video_structuralize.mp4", 15, 3, "basketball in a gym, 426x240, 300 frames", "unclear (YouTube clip)"),
    ("mmaction2", "open-mmlab/mmaction2", None, "tools/data/skeleton/S001C001P001R001A001_rgb.avi", 10, 1, "NTU RGB+D sample: person, indoor lab, 1920x1080, 103 frames", "NTU RGB+D: research-only"),
    ("mmhuman3d", "open-mmlab/mmhuman3d", None, "demo/resources/multi_person_demo.mp4", 3, 2, "two men passing a ball, outdoor, portrait 1080x1920, 40 frames @12", "unclear"),
    ("mmhuman3d", "open-mmlab/mmhuman3d", None, "demo/resources/single_person_demo.mp4", 3, 1, "man bouncing a ball, outdoor, portrait 1080x1920, 40 frames @12", "unclear"),
    ("pymaf", "HongwenZhang/PyMAF", None, "examples/dancer.mp4", 6, 1, "ballet dancer, studio, 1920x1080, 89 frames", "unclear"),
    ("hybrik", "Jeff-sjtu/HybrIK", None, "examples/taiji.mp4", 16, 1, "man doing tai chi, indoor, 1280x720, 412 frames @24", "unclear"),
    ("phalp", "brjathu/PHALP", None, "assets/videos/vid.mp4", 10, 1, "runner on an indoor track, 1920x1088, 180 frames", "unclear"),
    ("cliff", "haofanwang/CLIFF", None, "test_samples/01e222117f63f874010370037f551497ac_258.mp4", 15, 1, "woman dancing, purple light, portrait 720x1264, 343 frames", "unclear (social-media clip)"),
    ("cliff", "haofanwang/CLIFF", None, "test_samples/62883594000000000102c16c.mp4", 20, 2, "two dancers in a studio, portrait 720x1280, 567 frames", "unclear (social-media clip)"),
    ("sam2", "facebookresearch/sam2", None, "notebooks/videos/bedroom.mp4", 10, 2, "two children jumping on a bed, indoor, 960x540, 200 frames", "unclear (SA-V style clip)"),
    ("sam2", "facebookresearch/sam2", None, "demo/data/gallery/05_default_juggle.mp4", 12, 1, "man juggling a football in a park, 1280x720, 247 frames", "unclear (SA-V style clip)"),
    ("cotracker", "facebookresearch/co-tracker", None, "gradio_demo/videos/paragliding-launch.mp4", 8, 1, "paraglider launching (DAVIS clip), 854x480, 80 frames", "DAVIS: research (unclear)"),
    ("intel", "intel-iot-devkit/sample-videos", None, "one-by-one-person-detection.mp4", 20, 1, "people walk through a room one by one (many frames empty), 768x432, 1394 frames @10", "CC BY 4.0"),
    ("intel", "intel-iot-devkit/sample-videos", None, "preview/classroom.gif", 3, 6, "classroom, seated people (preview), 480x270", "CC BY 4.0"),
    ("intel", "intel-iot-devkit/sample-videos", None, "preview/face-demographics-walking.gif", 3, 2, "corridor, people walking towards camera, 480x270", "CC BY 4.0"),
    ("intel", "intel-iot-devkit/sample-videos", None, "preview/face-demographics-walking-and-pause.gif", 3, 3, "corridor, people walking and pausing, 480x270", "CC BY 4.0"),
    ("intel", "intel-iot-devkit/sample-videos", None, "preview/store-aisle-detection.gif", 4, 3, "store aisle from above, shoppers, 480x270", "CC BY 4.0"),
    ("intel", "intel-iot-devkit/sample-videos", None, "preview/worker-zone-detection.gif", 4, 1, "warehouse worker in hi-vis from above, 480x270", "CC BY 4.0"),
    ("intel", "intel-iot-devkit/sample-videos", None, "preview/head-pose-face-detection-female-and-male.gif", 4, 2, "two people, upper body, indoor, 480x270", "CC BY 4.0"),
    ("intel", "intel-iot-devkit/sample-videos", None, "preview/head-pose-face-detection-male.gif", 6, 1, "man, upper body, indoor, 480x270", "CC BY 4.0"),
    ("intel", "intel-iot-devkit/sample-videos", None, "preview/head-pose-face-detection-female.gif", 6, 1, "woman, upper body, indoor, 480x270", "CC BY 4.0"),
]
# ECON / ICON example photos (full-body fashion and pose photos, some multi-person)
ECON_DIRS = ("examples/cloth/", "examples/pose/", "examples/multi/")
ECON_TOP = ("examples/304e9c4798a8c3967de7c74c24ef2e38.jpg",)
ECON_MULTI = {"examples/multi/1.png": 4, "examples/multi/2.jpg": 5,
              "examples/multi/3.jpg": 3, "examples/multi/4.jpg": 6}
ICON_DIRS = ("examples/",)  # top level *.png, segmentation/*.jpg
# MediaPipe gesture-recognizer test images (people showing hand gestures, upper body)
MEDIAPIPE_DIR = "mediapipe/model_maker/python/vision/gesture_recognizer/testdata/raw_data/"

IMG_EXT = (".jpg", ".jpeg", ".png")
DARK_MEAN = 8.0
JPEG_QUALITY = 95

COCO_NAME = re.compile(r"(COCO_|^\d{12}\.(jpg|jpeg|png)$)", re.I)
EXCLUDED_PATH = re.compile(
    r"(coco|ochuman|crowdpose|3dpw|h36m|human3\.?6m|mpi_inf|3dhp|h3wb|halpe|humanart|"
    r"vtest|opencv|MOT1[67]-03|tests/data/(mpii|aic|mhp|jhmdb|posetrack18|exlpose)/|"
    r"/im1[0-9]{3}\.jpg|lspet|/im\d{5}\.jpg|bonn|060470979|S\d+_[A-Z][a-z]+.*\.\d{8})", re.I)
HELDOUT_PATHS = {("open-mmlab/mmtracking", "demo/demo.mp4"),
                 ("open-mmlab/mmpose", "demo/resources/demo.mp4")}  # looked at for the held-out set
# repositories the held-out set (benchmarks/real/MANIFEST.md) takes material from, besides mmpose fixtures
HELDOUT_REPOS = {"open-mmlab/mmtracking", "umariqb/PoseTrack-CVPR2017", "MiraiLouis/lsp_cpm",
                 "axelcarlier/lsp"}


def safe(s):
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def sha256(b):
    return hashlib.sha256(b).hexdigest()


class Git:
    def __init__(self, repo, gitdir):
        self.repo, self.gitdir = repo, gitdir

    def _run(self, *args):
        return subprocess.run(["git", "--git-dir", self.gitdir, *args], capture_output=True)

    def has(self, commit):
        return self._run("cat-file", "-e", commit + "^{commit}").returncode == 0

    def read(self, commit, path):
        r = self._run("show", f"{commit}:{path}")
        if r.returncode != 0:
            raise FileNotFoundError(f"{self.repo}@{commit}:{path}: {r.stderr.decode()[:200]}")
        return r.stdout

    def ls(self, commit, prefix):
        r = self._run("ls-tree", "-r", "--name-only", commit, prefix)
        return sorted(r.stdout.decode().split("\n")[:-1])


def resolve_gitdir(root, repo, overrides):
    if repo in overrides:
        return overrides[repo]
    base = os.path.join(root, repo.replace("/", "+"), "repo")
    return base + "/.git" if os.path.isdir(base + "/.git") else base


def expand_items(gits):
    """ITEMS plus the directory-listed photo sets, in a fixed order."""
    items = [dict(zip(("src", "repo", "commit", "path", "step", "people", "scene", "media_licence",
                       "stem"), it + (None,) * (9 - len(it)))) for it in ITEMS]
    econ = gits["YuliangXiu/ECON"]
    for p in list(ECON_TOP) + [p for d in ECON_DIRS for p in econ.ls(H[econ.repo], d)]:
        if p.lower().endswith(IMG_EXT):
            sub = p.split("/")[-2] if p.count("/") > 1 else ""
            items.append(dict(src="econ", repo=econ.repo, commit=None, path=p, step=None,
                              people=ECON_MULTI.get(p, 1),
                              scene={"cloth": "fashion photo, full body, 1 person",
                                     "pose": "studio jump/pose photo, full body, 1 person",
                                     "multi": "group photo, full body"}.get(sub, "full body, 1 person"),
                              media_licence=WEB, stem=(sub + "_" if sub else "") + os.path.splitext(os.path.basename(p))[0]))
    icon = gits["YuliangXiu/ICON"]
    for p in icon.ls(H[icon.repo], "examples/"):
        top = p.count("/") == 1
        if p.lower().endswith(IMG_EXT) and (top or p.startswith("examples/segmentation/")):
            items.append(dict(src="icon", repo=icon.repo, commit=None, path=p, step=None, people=1,
                              scene="full-body photo (pose / clothing example), 1 person",
                              media_licence=WEB, stem=None))
    mp = gits["google/mediapipe"]
    for p in mp.ls(H[mp.repo], MEDIAPIPE_DIR):
        if p.lower().endswith(IMG_EXT):
            cls = p.split("/")[-2]
            items.append(dict(src="mediapipe", repo=mp.repo, commit=None, path=p, step=None, people=1,
                              scene=f"person showing hand gesture '{cls}', upper body, indoor",
                              media_licence="unclear (gesture data set sample, HaGRID-like)",
                              stem=f"gesture_{cls}_{os.path.basename(p)[:8]}"))
    for it in items:
        it["commit"] = it["commit"] or H[it["repo"]]
    return items


def check_excluded(it, name):
    p = it["path"]
    assert not COCO_NAME.search(os.path.basename(p)), ("COCO-named source", p)
    assert not COCO_NAME.search(name), ("COCO-named output", name)
    assert not EXCLUDED_PATH.search(p), ("evaluation-set path", it["repo"], p)
    assert (it["repo"], p) not in HELDOUT_PATHS, ("held-out item", p)


def heldout_hashes(root):
    out = {}
    if not root or not os.path.isdir(root):
        return out
    for dp, dn, fn in os.walk(root):
        if os.path.abspath(dp).startswith(os.path.abspath(os.path.join(root, "train"))):
            continue
        for f in fn:
            fp = os.path.join(dp, f)
            with open(fp, "rb") as fh:
                out[sha256(fh.read())] = fp
    return out


def decode_frames(data, ext, step):
    import cv2
    import numpy as np
    with tempfile.NamedTemporaryFile(suffix=ext) as tf:
        tf.write(data)
        tf.flush()
        cap = cv2.VideoCapture(tf.name)
        i = 0
        while True:
            ok, f = cap.read()
            if not ok:
                break
            if i % step == 0:
                yield i, f, float(np.mean(f))
            i += 1
        cap.release()
        yield -1, None, float(i)  # sentinel: total frame count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mirror-root", default="/work/.mirror")
    ap.add_argument("--git", action="append", default=[], help="owner/name=GITDIR (override)")
    ap.add_argument("--out", default="/work/realdata/train")
    ap.add_argument("--heldout", default="/work/realdata",
                    help="held-out set folder; any source blob equal to one of its files is an error")
    args = ap.parse_args()
    import cv2

    assert not HELDOUT_REPOS & set(REPOS), HELDOUT_REPOS & set(REPOS)
    overrides = dict(s.split("=", 1) for s in args.git)
    gits = {}
    for repo in REPOS:
        g = Git(repo, resolve_gitdir(args.mirror_root, repo, overrides))
        if not g.has(H[repo]):
            sys.exit(f"{g.gitdir} lacks pinned commit {H[repo]} of {repo}")
        gits[repo] = g
    items = expand_items(gits)
    held = heldout_hashes(args.heldout)

    out = os.path.abspath(args.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(os.path.join(out, "photos"))
    os.makedirs(os.path.join(out, "frames"))

    files, sources, seen_blobs, names = [], [], {}, set()
    for it in items:
        g = gits[it["repo"]]
        data = g.read(it["commit"], it["path"])
        bsha = sha256(data)
        assert bsha not in seen_blobs, ("duplicate source blob", it["path"], seen_blobs.get(bsha))
        seen_blobs[bsha] = f"{it['repo']}:{it['path']}"
        assert bsha not in held, ("source equals a held-out file", it["path"], held.get(bsha))
        base, ext = os.path.splitext(os.path.basename(it["path"]))
        stem = safe(it["stem"] or base)
        src = dict(source=it["src"], repo=f"https://github.com/{it['repo']}", commit=it["commit"],
                   path=it["path"], repo_licence=REPOS[it["repo"]], media_licence=it["media_licence"],
                   scene=it["scene"], people_per_image=it["people"], source_sha256=bsha,
                   source_bytes=len(data))
        if it["step"] is None:
            name = f"{it['src']}_{stem}{ext.lower()}"
            check_excluded(it, name)
            assert name not in names, name
            names.add(name)
            with open(os.path.join(out, "photos", name), "wb") as fh:
                fh.write(data)
            files.append(dict(file=f"photos/{name}", sha256=bsha, kind="photo", frame=None,
                              people=it["people"], source_index=len(sources)))
            src.update(kind="photo", outputs=1)
        else:
            kept, dark, total = 0, [], 0
            check_excluded(it, f"{it['src']}_{stem}")
            for idx, frame, mean in decode_frames(data, ext.lower(), it["step"]):
                if idx < 0:
                    total = int(mean)
                    break
                if mean < DARK_MEAN:
                    dark.append(idx)
                    continue
                name = f"{it['src']}_{stem}_{idx:05d}.jpg"
                assert name not in names, name
                names.add(name)
                ok, enc = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                assert ok
                b = enc.tobytes()
                with open(os.path.join(out, "frames", name), "wb") as fh:
                    fh.write(b)
                files.append(dict(file=f"frames/{name}", sha256=sha256(b), kind="video_frame",
                                  frame=idx, people=it["people"], source_index=len(sources)))
                kept += 1
            assert kept > 0, ("no frames decoded", it["path"])
            src.update(kind="video", step=it["step"], frames_total=total, outputs=kept,
                       skipped_dark_frames=dark)
        sources.append(src)
        print(f"{it['src']:12s} {it['path'][-60:]:60s} -> {src['outputs']}", flush=True)

    n_ph = sum(f["kind"] == "photo" for f in files)
    n_fr = len(files) - n_ph
    totals = dict(files=len(files), photos=n_ph, video_frames=n_fr, sources=len(sources),
                  repositories=len({s["repo"] for s in sources}),
                  videos=sum(s["kind"] == "video" for s in sources),
                  people_instances_rough=sum(f["people"] for f in files))
    man = dict(info=dict(description="Unlabelled real photos / video frames of people for self-training "
                                     "(hmr_fast training/real/gather.py). Not for evaluation.",
                         opencv=cv2.__version__, jpeg_quality=JPEG_QUALITY, dark_mean_threshold=DARK_MEAN,
                         totals=totals),
               sources=sources, files=files)
    with open(os.path.join(out, "MANIFEST.json"), "w") as fh:
        json.dump(man, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print(json.dumps(totals))


if __name__ == "__main__":
    main()
