"""The steer stage: interventions during generation, measured honestly against peers.

- :mod:`~workbench.steer.image`: patch maps added to the image-token embeddings (the default
  site) and their per-patch least-squares fit.
- :mod:`~workbench.steer.intervene`: add / clamp at image, prompt or generated positions of a
  block, and the batched generation both sites go through.
- :mod:`~workbench.steer.counterfactual`: the concept drawn into the phantom image (reference).
- :mod:`~workbench.steer.peers`: difference-of-means direction and the prompt baseline.
- :mod:`~workbench.steer.metrics`: success, side effects, fluency, parse check of a text.
- :mod:`~workbench.steer.candidates`: which features to steer, chosen from the analysis.
- :mod:`~workbench.steer.evaluate`: generate and judge arms over held-out studies.
- :mod:`~workbench.steer.report`: rates per strength, operating points, the comparison.
- :mod:`~workbench.steer.config` and :mod:`~workbench.steer.run`: the stage itself.
"""

from workbench.io import lazy_exports

_EXPORTS = {
    "SteerConfig": "config",
    "SteeringError": "intervene",
    "demo_step": "run",
    "feature_steering": "intervene",
    "direction_steering": "intervene",
    "main": "run",
    "run_steer": "run",
    "steer_once": "intervene",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
