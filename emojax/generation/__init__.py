"""Generation: the transposed-layout decode step, Hugging Face's logits processing, the compiled
prefill + decode loop, and chat formatting of conversations. Built on the model core."""
