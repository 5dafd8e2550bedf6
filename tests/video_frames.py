"""Every frame of a video file the tests made, as BGR arrays (OpenCV's decoder)."""
import cv2


def read_frames(path) -> list:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames
