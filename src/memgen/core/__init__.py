"""Shared core: configuration, run artifacts, registries, sites and hooks."""
