"""The app's tabs, one module each: a builder that lays out Gradio components and wires events
to the pure handlers in :mod:`workbench.ui.handlers` and :mod:`workbench.ui.handlers_study`.
"""
