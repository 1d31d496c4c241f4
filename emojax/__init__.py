"""emojax: find and control emotion circuits in LLMs with pure, jittable JAX interventions."""
from emojax.config import ModelConfig
from emojax.generate import Generation, generate
from emojax.interventions import Intervention, stack_variants
from emojax.kv_cache import KVCache
from emojax.loading import DEFAULT_MODEL, LoadedModel, load_model
from emojax.model import Output, forward
from emojax.taps import TapSpec

__all__ = ["DEFAULT_MODEL", "Generation", "Intervention", "KVCache", "LoadedModel", "ModelConfig", "Output",
           "TapSpec", "forward", "generate", "load_model", "stack_variants"]
