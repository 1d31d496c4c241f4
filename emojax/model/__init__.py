"""The model core: configuration, parameters, the pure forward pass, RoPE, the KV cache, taps and
interventions. It imports nothing else of emojax, so every other package can build on it."""
