"""audio2lmk: speech -> per-frame 3D face mesh and head pose (the first stage)."""
