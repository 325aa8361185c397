"""``python -m lmk2video.generate model=DIR reference=IMAGE landmarks=FILE.npz out=OUT.mp4 [audio=FILE] ...``

Renders a landmark sequence as a video of the reference image's person (or, with ``audio=`` and
``audio2lmk_model=`` but no ``landmarks=``, speech first becomes landmarks). Options:
``conf/lmk2video/generate.yaml`` and ``conf/lmk2video/sampling/default.yaml``; what happens: :mod:`lmk2video.generation`. Bad input exits with status 2
and one ``error:`` line, before any model is loaded where the input alone decides; nothing is half-written,
and an existing output is kept unless ``overwrite=true``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from common.config import CONF_DIR
from common.errors import exit_on_user_error
from common.logs import quiet_libraries


@hydra.main(version_base="1.3", config_path=str(CONF_DIR / "lmk2video"), config_name="generate")
@exit_on_user_error
def main(cfg: DictConfig) -> str:
    from lmk2video.generation import GenerateSettings, generate

    quiet_libraries()
    return str(generate(GenerateSettings.from_config(cfg, cfg.paths.work_dir)))


if __name__ == "__main__":
    main()
