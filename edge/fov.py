"""Field-of-view (FOV) mask of a fundus photo, estimated from its dark border."""
from __future__ import annotations

import cv2
import numpy as np

# The FOV threshold on the (median-filtered) red channel is Otsu's, capped so a bright image without a dark
# border, or one with vignetting, keeps its darker periphery inside the FOV.
MAX_THRESHOLD = 30
MIN_THRESHOLD = 8
ERODE_FRACTION = 0.005  # erosion radius as a fraction of the shorter side: drops the bright rim at the edge


def estimate_fov(image_rgb: np.ndarray) -> np.ndarray:
    """Boolean HxW mask of the camera's circular field of view.

    Red channel (the brightest in a fundus photo, so the best contrast against the black surround), median
    filter, threshold = Otsu clipped to [8, 30], largest connected region with its holes filled (dark
    lesions or the pupil reflex inside the FOV stay in), then a small erosion. An image without a dark
    border comes back (almost) all True.
    """
    h, w = image_rgb.shape[:2]
    red = np.ascontiguousarray(image_rgb[..., 0])
    red = cv2.medianBlur(red, 5)
    otsu, _ = cv2.threshold(red, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    t = float(np.clip(otsu, MIN_THRESHOLD, MAX_THRESHOLD))
    binary = (red > t).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    fov = np.zeros((h, w), dtype=np.uint8)
    if not contours:
        return fov.astype(bool)
    largest = max(contours, key=cv2.contourArea)
    # Drawing the outer contour filled keeps the largest region and fills every hole in it at once.
    cv2.drawContours(fov, [largest], -1, 1, thickness=cv2.FILLED)
    r = max(1, int(round(ERODE_FRACTION * min(h, w))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    # Erode only against the dark surround: the image border itself is not an FOV edge.
    fov = cv2.erode(fov, kernel, borderType=cv2.BORDER_REPLICATE)
    return fov.astype(bool)
