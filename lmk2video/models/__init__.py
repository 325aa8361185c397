"""lmk2video networks: denoising UNet, reference UNet, motion modules, pose guider."""
