"""Behaviour: label generated answers (mem / gen / other) and mine flipped pairs."""
