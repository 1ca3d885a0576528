"""The steer stage: add SAE feature directions during generation and measure the effect.

- :mod:`~workbench.steer.intervene`: the intervention (steered generation) on any adapter.
- :mod:`~workbench.steer.evaluate`: label the steered reports and compare against peers.
- :mod:`~workbench.steer.run`: the stage itself, ``run_steer(cfg)`` and ``main(argv)``.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "SteerConfig": "run",
    "SteeringError": "intervene",
    "demo_step": "run",
    "main": "run",
    "run_steer": "run",
    "steer_once": "intervene",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
