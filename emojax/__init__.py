"""emojax: find and control emotion circuits in LLMs with pure, jittable JAX interventions."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from emojax.generation.loop import Generation, generate
from emojax.model.config import ModelConfig
from emojax.model.forward import Output, forward
from emojax.model.interventions import Intervention, stack_variants
from emojax.model.kv_cache import KVCache
from emojax.model.taps import TapSpec

if TYPE_CHECKING:
    from emojax.loading import DEFAULT_MODEL, LoadedModel, load_model

# Loading imports transformers (and with it torch, where installed: several seconds), which
# subpackages such as emojax.runs and worker processes that never load a model should not pay for.
_LAZY = {"DEFAULT_MODEL": "emojax.loading", "LoadedModel": "emojax.loading", "load_model": "emojax.loading"}

__all__ = ["DEFAULT_MODEL", "Generation", "Intervention", "KVCache", "LoadedModel", "ModelConfig", "Output",
           "TapSpec", "forward", "generate", "load_model", "stack_variants"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'emojax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
