"""What each metric of a run means, for the reports: plain data, without the tensor libraries the
metrics themselves need (:mod:`llm_dit.analysis.metrics`), so a report or a plot worker that reads
it imports no torch."""

from __future__ import annotations

#: Metric name -> (what it means, whether higher is closer/better), for reports.
METRIC_INFO = {
    "ssim_ref": ("SSIM to the reference", True),
    "psnr_ref": ("PSNR to the reference (dB)", True),
    "color_hist_ref": ("colour-histogram distance to the reference", False),
    "ssim_text": ("SSIM to the pure-text baseline", True),
    "psnr_text": ("PSNR to the pure-text baseline (dB)", True),
    "grid_artifact": ("16-px grid-artifact score (log10 ratio)", False),
    "vqa_yes": ("P(Yes): does it show the prompt? (Qwen3-VL)", True),
    "clip": ("CLIP image-prompt cosine", True),
    "siglip": ("SigLIP image-prompt cosine", True),
    "image_reward": ("ImageReward", True),
}
