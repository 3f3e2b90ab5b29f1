"""memgen: find and steer the neurons behind memorization and generalization in LMs."""

__version__ = "0.1.0"
