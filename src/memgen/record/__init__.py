"""Recording: last-prompt-token activations of the flipped pairs, every layer, to disk."""
