"""emojax: find and control emotion circuits in LLMs with pure, jittable JAX interventions."""
from emojax.config import ModelConfig
from emojax.interventions import Intervention, stack_variants
from emojax.kv_cache import KVCache
from emojax.model import Output, forward
from emojax.taps import TapSpec

__all__ = ["Intervention", "KVCache", "ModelConfig", "Output", "TapSpec", "forward", "stack_variants"]
