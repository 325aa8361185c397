"""lmk2video: landmark-conditioned portrait video diffusion (reference image + landmark sequence -> video)."""
