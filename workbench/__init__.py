"""Radiology interpretability workbench: look inside chest X-ray report generators."""

__version__ = "0.1.0"
