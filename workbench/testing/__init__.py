"""Planted runs for tests, the app's tiny run and benchmarks: complete run directories whose
features are known by construction (no training needed).
"""
