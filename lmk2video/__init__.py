"""lmk2video: a reference image plus a landmark sequence -> video, with a landmark-conditioned video diffusion model."""
