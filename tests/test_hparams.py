"""Transfer rules of method.md §8 reproduce its table for SmolLM2 and Qwen2.5."""
from emojax.method.hparams import map_layer, modulation_scale, transferred
from emojax.model.config import ModelConfig


def _cfg(layers: int, d_model: int) -> ModelConfig:
    return ModelConfig("llama", 10, d_model, layers, 1, 1, d_model, 4, 1e-5, 1e4, True, False)


def test_identity_on_original_depth() -> None:
    assert [map_layer(l, 28) for l in range(28)] == list(range(28))


def test_method_table_values() -> None:
    smol = transferred(_cfg(30, 576))
    assert (smol.steer_layers, smol.ref_layers) == (range(12, 22), range(23, 28))
    assert abs(smol.steer_alpha - 3.46) < 0.01
    qwen = transferred(_cfg(28, 3584))
    assert (qwen.steer_layers, qwen.ref_layers) == (range(11, 21), range(21, 26))
    assert abs(qwen.steer_alpha - 8.64) < 0.01
    assert transferred(_cfg(30, 576), literal_alpha=True).steer_alpha == 8.0


def test_modulation_scale() -> None:
    assert modulation_scale("anger") == 0.8 and modulation_scale("fear") == 1.0
    assert modulation_scale("anger", 2.0, official=False) == 2.0
