"""Chest X-ray data: phantom benchmark generator, MIMIC-CXR readers, report sections, labeller."""
