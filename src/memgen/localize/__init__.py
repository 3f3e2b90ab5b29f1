"""Localization: which neurons does an answer depend on, tested where the answer is planted."""
