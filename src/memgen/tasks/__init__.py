"""Tasks whose prompts can be answered by memory or by rule. Importing registers them."""

from memgen.core.examples import BEHAVIOURS, Behaviour, Example
from memgen.tasks import cipher, color, math, mix
from memgen.tasks.base import TASKS, Task, make_task

__all__ = [
    "BEHAVIOURS",
    "TASKS",
    "Behaviour",
    "Example",
    "Task",
    "cipher",
    "color",
    "make_task",
    "math",
    "mix",
]
