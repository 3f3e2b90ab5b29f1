"""memgen: find and steer the neurons behind memorization and generalization in LMs.

    import memgen
    steering = memgen.load_steering("runs/cipher/steer/best/mem_to_gen")  # chosen, held out
    with memgen.steer(model, steering):
        model.generate(...)
    neurons = memgen.NeuronSet.load("runs/color-seed0/neurons/top5")
    with memgen.steer(model, neurons, alpha=3, toward="gen"):     # the paper's alpha x NMD
        model.generate(...)

The public names are imported lazily, so `memgen --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "steer": "memgen.steering.api",
    "load_steering": "memgen.steering.saved",
    "Steering": "memgen.steering.saved",
    "NeuronSet": "memgen.core.neuron_set",
    "Site": "memgen.core.sites",
    "Intervention": "memgen.core.hooks",
    "intervene": "memgen.core.hooks",
    "record": "memgen.core.hooks",
    "load_config": "memgen.core.config",
    "load_trained": "memgen.core.modeling",
    "make_task": "memgen.tasks",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'memgen' has no attribute {name!r}")
