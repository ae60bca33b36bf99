"""Pose agreement: OpenPose body keypoints read back from rendered pose maps, compared by PCK.

Pose maps (controlnet-aux's OpenposeDetector, ControlNet's format) draw each of
the 18 body keypoints as a filled circle in its own colour (`KEYPOINT_COLORS`,
order nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right
hip/knee/ankle, left hip/knee/ankle, right/left eye, right/left ear) and limbs
in the same colours at 60% brightness. A keypoint is a connected blob of at
least `MIN_BLOB_PIXELS` pixels within `COLOR_TOLERANCE` of its colour; its
position is the blob's centroid. Several people give several blobs per colour.

`pose_pck` is the percentage of correct keypoints: a reference keypoint counts
when a generated keypoint of the same type lies within `threshold` x the
image's longer side (default 0.05), each generated keypoint matched at most
once (closest pairs first). Maps much smaller than the detector's resolution
blur the circles and lose keypoints.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SceditError
from .control_maps import as_array

KEYPOINT_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)
COLOR_TOLERANCE = 24
MIN_BLOB_PIXELS = 4
DEFAULT_PCK_THRESHOLD = 0.05


def pose_keypoints(pose_map) -> list[tuple[int, float, float]]:
    """(keypoint type 0..17, x, y) for every keypoint blob of a rendered OpenPose map."""
    import cv2

    a = as_array(pose_map, "RGB").astype(np.int16)
    if a.ndim != 3 or a.shape[2] != 3:
        raise SceditError(f"a pose map must be an RGB image, got shape {a.shape}")
    out = []
    for k, color in enumerate(KEYPOINT_COLORS):
        mask = (np.abs(a - np.asarray(color, np.int16)).max(axis=2) <= COLOR_TOLERANCE).astype(np.uint8)
        if not mask.any():
            continue
        n, _, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
        for i in range(1, n):  # 0 is the background
            if stats[i, cv2.CC_STAT_AREA] >= MIN_BLOB_PIXELS:
                out.append((k, float(centroids[i][0]), float(centroids[i][1])))
    return out


@dataclass
class PoseMatch:
    matched: int  # reference keypoints with a generated one of the same type close enough
    reference: int  # reference keypoints
    generated: int  # generated keypoints

    @property
    def pck(self) -> float:
        """matched / reference; with no reference keypoint: 1 if none was generated either, else 0."""
        if self.reference == 0:
            return 1.0 if self.generated == 0 else 0.0
        return self.matched / self.reference


def match_keypoints(reference, generated, max_distance: float) -> PoseMatch:
    """One-to-one matches per keypoint type, closest pairs first, within `max_distance` pixels."""
    matched = 0
    for k in {p[0] for p in reference} | {p[0] for p in generated}:
        ref = [(x, y) for t, x, y in reference if t == k]
        gen = [(x, y) for t, x, y in generated if t == k]
        pairs = sorted((float(np.hypot(rx - gx, ry - gy)), i, j)
                       for i, (rx, ry) in enumerate(ref) for j, (gx, gy) in enumerate(gen))
        used_r, used_g = set(), set()
        for d, i, j in pairs:
            if d > max_distance:
                break
            if i not in used_r and j not in used_g:
                used_r.add(i)
                used_g.add(j)
                matched += 1
    return PoseMatch(matched, len(reference), len(generated))


def pose_pck(reference, generated, threshold: float = DEFAULT_PCK_THRESHOLD) -> PoseMatch:
    """Keypoint agreement of two rendered pose maps of the same size; see the module docstring."""
    a, b = as_array(reference, "RGB"), as_array(generated, "RGB")
    if a.shape != b.shape:
        raise SceditError(f"pose maps differ in size: {a.shape} vs {b.shape}")
    if not 0 < threshold <= 1:
        raise SceditError(f"pose threshold {threshold}: give a fraction of the image's longer side in (0, 1]")
    return match_keypoints(pose_keypoints(a), pose_keypoints(b), threshold * max(a.shape[:2]))
