"""Load a model, print its greedy reply to a chat prompt and the per-layer residual norms at t*.

    python -m experiments.demo [--model=smollm2-135m-instruct] [--prompt="..."]
"""
from __future__ import annotations

import numpy as np
from absl import flags

import emojax
from emojax.launch.launcher import run_launcher
from emojax.method.prompts import NEUTRAL_SYSTEM, chat, tokenize_prompts

_MODEL = flags.DEFINE_string("model", emojax.DEFAULT_MODEL, "Registered name, HF checkpoint dir or .gguf file.")
_PROMPT = flags.DEFINE_string(
    "prompt", "I finished the project presentation and sent it to the team for review this afternoon\n"
              "The team praised its clarity and will adopt the recommendations at once.",
    "User message (the system message is the protocol's neutral one).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 40, "New tokens to generate.")


def main(argv: list[str]) -> None:
    del argv
    model = emojax.load_model(_MODEL.value)
    messages = chat(NEUTRAL_SYSTEM, _PROMPT.value)
    reply = emojax.generate(model, [messages], max_new_tokens=_MAX_NEW.value, min_new_tokens=10,
                            repetition_penalty=1.1, no_repeat_ngram_size=3)
    print(f"model: {model.name} ({model.config.n_layers} layers, d_model {model.config.d_model})")
    print(f"reply: {reply.texts[0]}")
    batch = tokenize_prompts(model.tokenizer, [messages])
    out = emojax.forward(model.params, batch.tokens, config=model.config, mask=batch.mask, logits="none",
                         taps=emojax.TapSpec(points=("resid_mid", "resid_post"), at="last"))
    mid, post = (np.linalg.norm(np.asarray(out.taps[k][0]), axis=-1) for k in ("resid_mid", "resid_post"))
    print("layer  |resid_mid|  |resid_post|   (last prompt token)")
    for layer, (a, b) in enumerate(zip(mid, post)):
        print(f"{layer:5d}  {a:11.2f}  {b:12.2f}")


if __name__ == "__main__":
    run_launcher(main)
