"""Every tap point equals the HF hidden state or hook value it names (hidden_states[l] = resid_pre[l],
final = the post-norm state, z = o_proj input, g = down_proj input, ...), at the last token and at
every token of a left-padded batch; projected taps equal the projection of the raw taps."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import left_padded, random_prompts, torch_hooks

from emojax import Intervention, TapSpec, forward
from emojax.model.taps import ALL_POINTS, LAYER_POINTS

TOL = 1e-4
LENGTHS = (40, 27, 11)
MODEL = "qwen2_bias"


@pytest.fixture(scope="module")
def m(tiny_model):
    return tiny_model(MODEL)


@pytest.fixture(scope="module")
def batch(m):
    prompts = random_prompts(LENGTHS, m.config.vocab_size, seed=30)
    tokens, mask = left_padded(prompts, m.config.vocab_size)
    return prompts, tokens, mask


def hf_points(hf, prompt: np.ndarray) -> dict[str, np.ndarray]:
    """Every tap point of one unpadded prompt from HF: layer points [L, T, width], final [T, D]."""
    got: dict[str, list] = {name: [] for name in LAYER_POINTS if name != "resid_pre"}

    def keep(name, from_input):
        def hook(module, args, out=None):
            value = args[0] if from_input else (out[0] if isinstance(out, tuple) else out)
            got[name].append(value[0].detach().numpy().copy())
        return hook

    hooks = []
    for layer in hf.model.layers:
        hooks += [(layer.self_attn, "post", keep("attn_out", False)),
                  (layer.post_attention_layernorm, "pre", keep("resid_mid", True)),
                  (layer.self_attn.o_proj, "pre", keep("z", True)),
                  (layer.mlp.down_proj, "pre", keep("g", True)),
                  (layer.mlp, "post", keep("mlp_out", False)),
                  (layer, "post", keep("resid_post", False))]
    with torch_hooks(hooks), torch.no_grad():
        out = hf(torch.as_tensor(prompt[None]), output_hidden_states=True)
    points = {name: np.stack(values) for name, values in got.items()}
    hidden = [h[0].numpy() for h in out.hidden_states]
    points["resid_pre"] = np.stack(hidden[:-1])
    points["final"] = hidden[-1]
    return points


@pytest.fixture(scope="module")
def reference(m, batch):
    return [hf_points(m.hf, p) for p in batch[0]]


def test_taps_at_every_token_equal_hf(m, batch, reference):
    prompts, tokens, mask = batch
    out = forward(m.params, tokens, config=m.config, mask=mask, taps=TapSpec(points=ALL_POINTS, at="all"))
    for row, ref in enumerate(reference):
        for name in ALL_POINTS:
            got = np.asarray(out.taps[name])[row]
            got = got[mask[row]] if name == "final" else got[:, mask[row]]  # [L, T, w] or [T, D]
            np.testing.assert_allclose(got, ref[name], rtol=0, atol=TOL, err_msg=f"{name}, row {row}")


def test_taps_at_the_last_token_equal_hf(m, batch, reference):
    prompts, tokens, mask = batch
    out = forward(m.params, tokens, config=m.config, mask=mask, taps=TapSpec(points=ALL_POINTS, at="last"),
                  logits="none")
    assert out.taps["resid_mid"].shape == (len(prompts), m.config.n_layers, m.config.d_model)
    assert out.taps["z"].shape == (len(prompts), m.config.n_layers, m.config.q_dim)
    assert out.taps["final"].shape == (len(prompts), m.config.d_model)
    for row, ref in enumerate(reference):
        for name in ALL_POINTS:
            want = ref[name][-1] if name == "final" else ref[name][:, -1]
            np.testing.assert_allclose(np.asarray(out.taps[name])[row], want, rtol=0, atol=TOL,
                                       err_msg=f"{name}, row {row}")


@pytest.mark.parametrize("at", ["last", "all"])
def test_projected_taps_equal_the_projection_of_raw_taps(m, batch, at):
    _, tokens, mask = batch
    c, rng, k = m.config, np.random.default_rng(31), 5
    directions = {  # per-layer stacks [L, K, w] and shared stacks [K, w]
        "resid_mid": rng.normal(size=(c.n_layers, k, c.d_model)).astype(np.float32),
        "g": rng.normal(size=(c.n_layers, k, c.d_ff)).astype(np.float32),
        "z": rng.normal(size=(k, c.q_dim)).astype(np.float32),
        "final": rng.normal(size=(k, c.d_model)).astype(np.float32),
    }
    names = tuple(directions)
    raw = forward(m.params, tokens, config=c, mask=mask, taps=TapSpec(points=names, at=at)).taps
    proj = forward(m.params, tokens, config=c, mask=mask, taps=TapSpec(points=names, at=at, project=names),
                   directions={n: jnp.asarray(d) for n, d in directions.items()}).taps
    for name, d in directions.items():
        x = np.asarray(raw[name], np.float64)
        if name == "final":
            want = np.einsum("...w,kw->...k", x, d)
        elif d.ndim == 3:
            want = np.einsum("bl...w,lkw->bl...k", x, d)
        else:
            want = np.einsum("bl...w,kw->bl...k", x, d)
        assert proj[name].shape == want.shape, name
        np.testing.assert_allclose(np.asarray(proj[name]), want, rtol=1e-5, atol=1e-3, err_msg=name)


def test_residual_taps_include_residual_edits_and_branch_taps_do_not(m, batch):
    """resid_mid = resid_pre + attn_out + edit(site 0); resid_post = resid_mid + mlp_out + edit(site 1)."""
    _, tokens, mask = batch
    c = m.config
    v0, v1 = np.full(c.d_model, 0.5, np.float32), np.linspace(-1, 1, c.d_model, dtype=np.float32)
    iv = Intervention.identity(c, resid_where="last").add_resid(1, 0, v0).add_resid(1, 1, v1)
    taps = forward(m.params, tokens, config=c, mask=mask, iv=iv, logits="none",
                   taps=TapSpec(points=("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"), at="all")).taps
    t = {name: np.asarray(value)[:, 1] for name, value in taps.items()}  # layer 1: [B, T, D]
    at_last = np.zeros(tokens.shape, bool)
    at_last[:, -1] = True
    edit0, edit1 = at_last[..., None] * v0, at_last[..., None] * v1
    np.testing.assert_allclose(t["resid_mid"], t["resid_pre"] + t["attn_out"] + edit0, rtol=0, atol=1e-5)
    np.testing.assert_allclose(t["resid_post"], t["resid_mid"] + t["mlp_out"] + edit1, rtol=0, atol=1e-5)
