"""The samplers ``generate`` can use in place of a model's own (``scheduler=NAME``, with ``steps=``).

Each is a diffusers scheduler built from the model's scheduler config (``from_config``, as diffusers swaps
schedulers), so it keeps what the model was trained for: prediction type (v-prediction for our models), the
beta schedule, zero-terminal-SNR rescaling, timestep spacing and sample clipping. What each adds:

========  ===================================  =====================================================
name      diffusers class                      settings on top of the model's config
========  ===================================  =====================================================
ddim      ``DDIMScheduler``                    (AniPortrait's sampler; the shipped models' own)
dpmpp_2m  ``DPMSolverMultistepScheduler``      DPM-Solver++, second order, last step to sigma 0
unipc     ``UniPCMultistepScheduler``          second order, last step to sigma 0
euler     ``EulerDiscreteScheduler``           last step to sigma 0
lcm       ``LCMScheduler``                     for consistency-distilled models (warns otherwise)
tcd       ``TCDScheduler``                     for trajectory-consistency-distilled models (warns otherwise)
========  ===================================  =====================================================
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from common.errors import UserError

log = logging.getLogger(__name__)

# name -> (diffusers class name, settings added to the model's scheduler config)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"},
    ),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "final_sigmas_type": "zero"}),
    "euler": ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}),
    "lcm": ("LCMScheduler", {}),
    "tcd": ("TCDScheduler", {}),
}
CONSISTENCY = ("lcm", "tcd")  # samplers for distilled students only


def check_scheduler(name: str | None) -> None:
    """``None`` (the model's own) or one of :data:`SCHEDULERS`."""
    if name is not None and name not in SCHEDULERS:
        raise UserError(
            f"scheduler={name!r}; choose one of {', '.join(SCHEDULERS)} (or null: the model's own)"
        )


def make_scheduler(
    name: str, model_config: Mapping[str, Any], *, distilled: bool = False, source: str = ""
) -> Any:
    """The scheduler ``name`` configured like ``model_config`` (a model's scheduler config)."""
    import diffusers

    check_scheduler(name)
    class_name, extra = SCHEDULERS[name]
    cls = getattr(diffusers, class_name)
    config = {k: v for k, v in dict(model_config).items() if not k.startswith("_")}
    if name in CONSISTENCY and not distilled:
        log.warning(
            "scheduler=%s on %s, a model not distilled for it: expect blurred frames; its own sampler "
            "(scheduler=null) or ddim/dpmpp_2m/unipc suit it",
            name,
            source or "the model",
        )
    return cls.from_config({**config, **extra})
