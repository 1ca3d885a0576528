"""Models the workbench analyses and the machinery around them.

- :mod:`workbench.models.maira2`: MAIRA-2 natively on transformers 5 (config + model).
- :mod:`workbench.models.checkpoint`: strict hub-layout loading/saving, the one key mapping.
- :mod:`workbench.models.processor`: MAIRA-2's image normalisation, prompts, token expansion
  and output parsing.
- :mod:`workbench.models.hooks`: TransformerLens hook names mapped to HF modules; capture
  (stopping the forward) and interventions.
- :mod:`workbench.models.registry`: ``load_model(spec)`` -> one adapter interface for MAIRA-2,
  maira2-mini, HF LLaVA-family checkpoints and HF causal LMs.
- :mod:`workbench.models.tiny`: tiny random-weight models of each architecture for tests.

Submodules are imported on demand (transformers is slow to import).
"""
