"""Metrics of talking videos, whoever made them (``python -m common.evaluate``).

One module per family: :mod:`.media` (reading clips), :mod:`.faces` (MediaPipe on every frame),
:mod:`.landmarks` (landmark distance, mouth opening, head pose, jitter), :mod:`.identity` (dlib's face
descriptor), :mod:`.sync` (lip sync without ground truth; SyncNet's LSE-C/D with user-supplied weights),
:mod:`.pixels` (PSNR, SSIM), :mod:`.distributions` (FID, FVD with user-supplied networks), :mod:`.stats`
(bootstrap intervals), :mod:`.report` (JSON, Markdown, plots) and :mod:`.run` (all of it over folders).
Nothing here knows the project's models.
"""
