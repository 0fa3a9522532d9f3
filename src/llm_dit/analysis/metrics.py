"""Offline image metrics: nothing here downloads weights (see peers-and-anchors §4).

Every cell of an experiment gets:

* ``ssim_*`` / ``psnr_*`` against the reference image and against the pure-text baseline
  (torchmetrics; both images fitted to the cell's size, shrunk to a longest side of :data:`METRIC_SIZE`; the
  reference center-cropped to the cell's aspect ratio);
* ``grid_artifact``: the seeds' "grid patterns", measured. The DiT sees the latent in 2x2 patches of
  an 8x VAE, so its artifacts repeat every 16 pixels. For each direction, the power spectrum of the
  luminance rows (columns) is averaged; at each harmonic ``m / 16`` cycles per pixel (``m = 1..8``)
  the power is divided by the median power of the 8 neighbouring frequency bins. The score is
  ``log10`` of the mean of those ratios over harmonics and both directions: about 0 for an image with
  no 16-pixel structure, 1 when the harmonics stand ten times above their surroundings;
* ``color_hist``: chi-square distance ``0.5 * sum (p - q)^2 / (p + q)`` between the joint RGB
  histograms (8 bins per channel) of the cell and the reference, in ``[0, 1]``: a cheap style proxy;
* ``vqa_yes`` (when Qwen3-VL is loaded): P("Yes") to "Does this image show {prompt}?" (VQAScore,
  computed with the VL model of the run; see :meth:`llm_dit.vl.VLEmbeddingExtractor.answer_probability`).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

#: Images are compared at this longest side: structure metrics do not need 1024 px, and 16x fewer
#: pixels keep them cheap next to a GPU generation.
METRIC_SIZE = 256
PATCH_PERIOD = 16  # VAE 8x times the DiT's 2x2 patches
HIST_BINS = 8


def _metric_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = size
    s = min(1.0, METRIC_SIZE / max(w, h))  # shrink, never enlarge
    return max(1, round(w * s)), max(1, round(h * s))


def _tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """``[1, 3, H, W]`` in ``[0, 1]``, fitted (scaled and center-cropped) to ``size``."""
    im = ImageOps.fit(image.convert("RGB"), size, method=Image.Resampling.LANCZOS)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def ssim_psnr(image: Image.Image, other: Image.Image, device: str | torch.device = "cpu") -> tuple[float, float]:
    """``(SSIM, PSNR in dB)`` of ``image`` against ``other``, at the metric size of ``image``,
    computed on ``device`` (runs score on the CPU: at 256 px it is a few milliseconds, and on a busy
    GPU each result would wait for the kernels queued before it).

    PSNR of identical images is infinite (``inf``; the JSON records write it as null)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    size = _metric_size(image.size)
    a, b = _tensor(image, size).to(device), _tensor(other, size).to(device)
    ssim_t = structural_similarity_index_measure(a, b, data_range=1.0)
    assert isinstance(ssim_t, torch.Tensor), "one number (a tuple comes only with return_full_image=True)"
    ssim = float(ssim_t)
    mse = float(torch.mean((a - b) ** 2))
    psnr = float("inf") if mse == 0 else float(peak_signal_noise_ratio(a, b, data_range=1.0))
    return ssim, psnr


def _luminance(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("L"), dtype=np.float64) / 255.0


def _harmonic_ratios(profile_power: np.ndarray, n: int, period: int) -> list[float]:
    """Power at each harmonic of ``1/period`` over the median of its 8 neighbouring bins."""
    ratios = []
    for m in range(1, period // 2 + 1):
        k = m * n / period
        if k != int(k):
            continue  # the harmonic falls between bins: the image size is not a multiple of period
        k = int(k)
        lo, hi = max(1, k - 4), min(len(profile_power) - 1, k + 4)
        neighbours = [profile_power[j] for j in range(lo, hi + 1) if j != k]
        if not neighbours:
            continue
        ratios.append(float(profile_power[k] / max(np.median(neighbours), 1e-20)))
    return ratios


def grid_artifact_score(image: Image.Image, period: int = PATCH_PERIOD) -> float:
    """``log10`` of the mean peak-to-background power ratio at the harmonics of ``1 / period``
    (see the module docstring). Needs a side of at least ``2 * period`` pixels; else 0."""
    g = _luminance(image)
    ratios = []
    for x in (g, g.T):  # rows: horizontal frequencies; then columns
        n = x.shape[1]
        if n < 2 * period:
            continue
        power = (np.abs(np.fft.rfft(x - x.mean(axis=1, keepdims=True), axis=1)) ** 2).mean(axis=0)
        ratios += _harmonic_ratios(power, n, period)
    return float(np.log10(np.mean(ratios))) if ratios else 0.0


def color_histogram(image: Image.Image, bins: int = HIST_BINS) -> np.ndarray:
    """The joint RGB histogram, ``bins`` per channel, normalized to sum 1 (flattened)."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.int64) * bins // 256
    idx = (rgb[..., 0] * bins + rgb[..., 1]) * bins + rgb[..., 2]
    hist = np.bincount(idx.ravel(), minlength=bins**3).astype(np.float64)
    return hist / hist.sum()


def color_histogram_distance(image: Image.Image, other: Image.Image) -> float:
    """Chi-square distance between joint RGB histograms, in ``[0, 1]`` (0: same colour distribution)."""
    p, q = color_histogram(image), color_histogram(other)
    s = p + q
    nz = s > 0
    return float(0.5 * np.sum((p[nz] - q[nz]) ** 2 / s[nz]))


def image_metrics(image: Image.Image, reference: Image.Image | None, baseline: Image.Image | None,
                  device: str | torch.device = "cpu") -> dict:
    """The offline metrics of one cell (a missing reference or baseline leaves its entries out);
    SSIM and PSNR computed on ``device``."""
    out: dict[str, float] = {"grid_artifact": grid_artifact_score(image)}
    if reference is not None:
        out["ssim_ref"], out["psnr_ref"] = ssim_psnr(image, reference, device)
        out["color_hist_ref"] = color_histogram_distance(image, reference)
    if baseline is not None:
        out["ssim_text"], out["psnr_text"] = ssim_psnr(image, baseline, device)
    return out
