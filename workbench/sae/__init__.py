"""Matryoshka BatchTopK sparse autoencoders: the module, its file formats and its trainer.

``from workbench.sae import MatryoshkaSAE, load_sae`` is the contract other stages build on;
``load_sae`` reads our artefact, a SAELens directory or a dictionary_learning ``ae.pt``.
"""

from workbench.sae.io import SAEFormatError, load_sae, save_sae
from workbench.sae.matryoshka import MatryoshkaSAE

__all__ = ["MatryoshkaSAE", "SAEFormatError", "load_sae", "save_sae"]
