"""Each Intervention field equals its definition, written as a PyTorch hook on the same HF model:
head edits act on the o_proj input slice of one query head, neuron edits on the down_proj input,
residual edits on the residual stream after the attention (site 0) or after the MLP (site 1).

emojax runs a left-padded batch; HF runs each prompt alone with the edit at the position ids the
selector names, so every comparison also checks the selectors under padding.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from conftest import hf_logits, left_padded, random_prompts, torch_hooks

from emojax import Intervention, KVCache, TapSpec, forward, stack_variants

TOL = 1e-4
LENGTHS = (48, 33, 20)
MODEL = "llama_gqa_tied"  # grouped-query: 4 query heads share 2 kv heads

# A hook factory takes the boolean [T] of positions (of one unpadded prompt) the edit touches.
HookFactory = Callable[[Any, np.ndarray], list[tuple[Any, str, Callable]]]


@pytest.fixture(scope="module")
def m(tiny_model):
    return tiny_model(MODEL)


@pytest.fixture(scope="module")
def batch(m):
    prompts = random_prompts(LENGTHS, m.config.vocab_size, seed=10)
    tokens, mask = left_padded(prompts, m.config.vocab_size)
    return prompts, tokens, mask


def vec(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def selected(where: str, n: int, t_star: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Positions 0..n-1 of one prompt that a selector names, as its definition states them."""
    pos = np.arange(n)
    return {"all": np.ones(n, bool), "last": pos == t_star, "from_last": pos >= t_star,
            "mask": None if mask is None else mask[:n]}[where]


def assert_matches_hf(m, iv: Intervention, prompts, tokens, mask, hooks: HookFactory, where: str,
                      sel_mask: np.ndarray | None = None, t_stars: list[int] | None = None) -> None:
    """emojax(batch, iv) at every real position == HF(prompt alone, hooks at the selected positions)."""
    last_pos = None if t_stars is None else jnp.asarray(t_stars)
    ours = np.asarray(forward(m.params, tokens, config=m.config, mask=mask, iv=iv, last_pos=last_pos).logits)
    plain = hf_logits(m.hf, tokens[:1, mask[0]])[0]
    for row, prompt in enumerate(prompts):
        t_star = len(prompt) - 1 if t_stars is None else t_stars[row]
        row_mask = None if sel_mask is None else (sel_mask if sel_mask.ndim == 1 else sel_mask[row])
        at = selected(where, len(prompt), t_star, row_mask)
        with torch_hooks(hooks(m.hf, at)):
            edited = hf_logits(m.hf, prompt[None])[0]
        np.testing.assert_allclose(ours[row, mask[row]], edited, rtol=0, atol=TOL, err_msg=f"row {row}")
    # The hooks are gone again, and the edit is visible (or the comparison above proves nothing).
    np.testing.assert_array_equal(hf_logits(m.hf, tokens[:1, mask[0]])[0], plain)
    assert np.abs(ours[0, mask[0]] - plain).max() > 1e-2


# --- hook definitions -------------------------------------------------------------------------

def head_hook(layer: int, head: int, head_dim: int, scale: float, add: np.ndarray) -> HookFactory:
    def factory(hf, at):
        cols = slice(head * head_dim, (head + 1) * head_dim)

        def pre(module, args):
            z = args[0].clone()
            z[0, at, cols] = z[0, at, cols] * scale + torch.from_numpy(add)
            return (z,)
        return [(hf.model.layers[layer].self_attn.o_proj, "pre", pre)]
    return factory


def neuron_hook(layer: int, scale: np.ndarray, add: np.ndarray) -> HookFactory:
    def factory(hf, at):
        def pre(module, args):
            g = args[0].clone()
            g[0, at] = g[0, at] * torch.from_numpy(scale) + torch.from_numpy(add)
            return (g,)
        return [(hf.model.layers[layer].mlp.down_proj, "pre", pre)]
    return factory


def _rms(h: torch.Tensor) -> torch.Tensor:
    return torch.sqrt((h * h).mean(-1, keepdim=True) + 1e-12)


def resid_hook(layer: int, site: int, add: np.ndarray, rms_scaled: bool = False) -> HookFactory:
    """h <- h + add (or h + rms(h) * add) on the residual after the attention or the MLP."""
    def factory(hf, at):
        block = hf.model.layers[layer]
        v = torch.from_numpy(add)
        if site == 1:
            def post(module, args, out):
                out = out.clone()
                out[0, at] += _rms(out[0, at]) * v if rms_scaled else v
                return out
            return [(block, "post", post)]
        # Site 0: the residual after attention is (layer input + attention output); the attention
        # output hook adds the edit, reading the layer input saved by a pre-hook for the rms.
        saved = {}

        def keep_input(module, args):
            saved["x"] = args[0]

        def post_attn(module, args, out):
            attn = out[0].clone()
            resid = saved["x"][0, at] + attn[0, at]
            attn[0, at] += _rms(resid) * v if rms_scaled else v
            return (attn,) + tuple(out[1:])
        return [(block, "pre", keep_input), (block.self_attn, "post", post_attn)]
    return factory


def combine(*factories: HookFactory) -> HookFactory:
    return lambda hf, at: [h for f in factories for h in f(hf, at)]


# --- tests ------------------------------------------------------------------------------------

def test_identity_is_bitwise_equal_to_no_intervention(m, batch):
    _, tokens, mask = batch
    spec = TapSpec(points=("resid_pre", "attn_out", "resid_mid", "z", "g", "mlp_out", "resid_post", "final"),
                   at="all")
    plain = forward(m.params, tokens, config=m.config, mask=mask, taps=spec)
    for where in ("all", "from_last"):
        iv = Intervention.identity(m.config, resid_where=where, neuron_where=where, head_where=where)
        edited = forward(m.params, tokens, config=m.config, mask=mask, iv=iv, taps=spec)
        np.testing.assert_array_equal(np.asarray(edited.logits), np.asarray(plain.logits))
        for name in spec.points:
            np.testing.assert_array_equal(np.asarray(edited.taps[name]), np.asarray(plain.taps[name]), err_msg=name)


GROUP_FIELDS = {"resid": {"resid_add": 0.0, "resid_add_rms": 0.0}, "neuron": {"neuron_scale": 1.0, "neuron_add": 0.0},
                "head": {"head_scale": 1.0, "head_add": 0.0}}


def _compiled_flops(m, tokens, mask, iv: Intervention | None) -> float:
    run = jax.jit(lambda iv: forward(m.params, tokens, config=m.config, mask=mask, iv=iv).logits)
    return run.lower(iv).compile().cost_analysis()["flops"]


@pytest.mark.parametrize("group", sorted(GROUP_FIELDS))
def test_a_group_set_to_none_equals_its_fields_at_identity(m, batch, group):
    _, tokens, mask = batch
    rng = np.random.default_rng(7)
    edits = Intervention.identity(m.config)
    edits = edits.replace(**{name: getattr(edits, name) + rng.normal(0, 0.3, getattr(edits, name).shape)
                             for fields in GROUP_FIELDS.values() for name in fields})
    off = edits.with_where(**{group: "none"})
    reference = edits.replace(**{name: jnp.full_like(getattr(edits, name), value)
                                 for name, value in GROUP_FIELDS[group].items()})
    ours = forward(m.params, tokens, config=m.config, mask=mask, iv=off).logits
    expected = forward(m.params, tokens, config=m.config, mask=mask, iv=reference).logits
    np.testing.assert_allclose(np.asarray(ours), np.asarray(expected), rtol=0, atol=1e-6)


def test_groups_set_to_none_are_left_out_of_the_program(m, batch):
    _, tokens, mask = batch
    all_off = Intervention.identity(m.config, resid_where="none", neuron_where="none", head_where="none")
    plain, none, identity = (_compiled_flops(m, tokens, mask, iv)
                             for iv in (None, all_off, Intervention.identity(m.config)))
    assert none == plain < identity


def test_zeroed_head_equals_zeroing_its_o_proj_input_slice(m, batch):
    iv = Intervention.identity(m.config).zero_heads([(1, 3)])
    assert_matches_hf(m, iv, *batch, head_hook(1, 3, m.config.head_dim, 0.0, np.zeros(m.config.head_dim, np.float32)),
                      "all")


def test_head_scale_and_add_equal_editing_the_slice(m, batch):
    add = vec(1, m.config.head_dim)
    iv = Intervention.identity(m.config, head_where="last")
    iv = iv.replace(head_scale=iv.head_scale.at[2, 1].set(1.7), head_add=iv.head_add.at[2, 1].set(add))
    assert_matches_hf(m, iv, *batch, head_hook(2, 1, m.config.head_dim, 1.7, add), "last")


def test_neuron_scale_and_add_equal_editing_the_down_proj_input(m, batch):
    f = m.config.d_ff
    scale = np.ones(f, np.float32)
    scale[[3, 17, 40]] = [0.0, 2.5, -1.0]
    add = np.zeros(f, np.float32)
    add[[5, 17]] = [3.0, -2.0]
    iv = Intervention.identity(m.config)
    iv = iv.replace(neuron_scale=iv.neuron_scale.at[0].set(scale), neuron_add=iv.neuron_add.at[0].set(add))
    assert_matches_hf(m, iv, *batch, neuron_hook(0, scale, add), "all")
    assert_matches_hf(m, iv.zero_neurons([(0, 3)]).with_where(neuron="last"), *batch,
                      neuron_hook(0, np.where(np.arange(f) == 3, 0.0, scale).astype(np.float32), add), "last")


def test_resid_add_at_the_last_position_equals_a_layer_output_hook(m, batch):
    v = vec(2, m.config.d_model)
    iv = Intervention.identity(m.config, resid_where="last").add_resid(1, 1, v)
    assert_matches_hf(m, iv, *batch, resid_hook(1, 1, v), "last")


def test_resid_add_after_attention_equals_an_attention_output_hook(m, batch):
    v = vec(3, m.config.d_model)
    iv = Intervention.identity(m.config).add_resid(0, 0, v)
    assert_matches_hf(m, iv, *batch, resid_hook(0, 0, v), "all")


@pytest.mark.parametrize("site", [0, 1])
def test_resid_add_rms_is_alpha_times_rms_times_v(m, batch, site):
    alpha, v = 4.0, vec(4 + site, m.config.d_model)
    v /= np.linalg.norm(v)
    iv = Intervention.identity(m.config).add_resid(2, site, alpha * v, rms_scaled=True)
    assert_matches_hf(m, iv, *batch, resid_hook(2, site, alpha * v, rms_scaled=True), "all")


def _mixed_edit(m, where: str, **masks) -> tuple[Intervention, HookFactory]:
    """One residual, one neuron and one head edit, all under the same selector."""
    v, add = vec(6, m.config.d_model), vec(7, m.config.head_dim)
    iv = Intervention.identity(m.config, resid_where=where, neuron_where=where, head_where=where, **masks)
    iv = iv.add_resid(1, 1, v).zero_neurons([(2, 9)])
    iv = iv.replace(head_add=iv.head_add.at[0, 2].set(add))
    scale = np.where(np.arange(m.config.d_ff) == 9, 0.0, 1.0).astype(np.float32)
    hooks = combine(resid_hook(1, 1, v), neuron_hook(2, scale, np.zeros(m.config.d_ff, np.float32)),
                    head_hook(0, 2, m.config.head_dim, 1.0, add))
    return iv, hooks


@pytest.mark.parametrize("where", ["all", "last"])
def test_selector_under_left_padding(m, batch, where):
    iv, hooks = _mixed_edit(m, where)
    assert_matches_hf(m, iv, *batch, hooks, where)


def test_from_last_selector_with_an_earlier_t_star(m, batch):
    """A call holding prompt and continuation together, t* given explicitly: the edit covers t*
    and every later position."""
    prompts, tokens, mask = batch
    iv, hooks = _mixed_edit(m, "from_last")
    t_stars = [len(p) - 6 for p in prompts]
    assert_matches_hf(m, iv, prompts, tokens, mask, hooks, "from_last", t_stars=t_stars)


@pytest.mark.parametrize("per_row", [False, True])
def test_mask_selector_over_position_ids(m, batch, per_row):
    prompts, tokens, mask = batch
    rng = np.random.default_rng(8 + per_row)
    width = max(LENGTHS) + 4  # longer than any prompt: positions beyond a row's length are unused
    sel = rng.random((len(prompts), width) if per_row else width) < 0.3
    masks = {f"{g}_mask": jnp.asarray(sel) for g in ("resid", "neuron", "head")}
    iv, hooks = _mixed_edit(m, "mask", **masks)
    assert_matches_hf(m, iv, prompts, tokens, mask, hooks, "mask", sel_mask=sel)


def test_from_last_in_cached_decoding_equals_one_call(m, batch):
    """Prefill the prompt (t* = its last token), then decode token by token: the edit reaches t*
    and every generated token, exactly as one call over the whole sequence with that t*."""
    prompts, tokens, mask = batch
    iv, _ = _mixed_edit(m, "from_last")
    extra = np.random.default_rng(11).integers(0, m.config.vocab_size, (len(prompts), 5))
    full_tokens = np.concatenate([tokens, extra], axis=1)
    full_mask = np.concatenate([mask, np.ones_like(extra, bool)], axis=1)
    t_stars = jnp.asarray([len(p) - 1 for p in prompts])
    full = forward(m.params, full_tokens, config=m.config, mask=full_mask, iv=iv, last_pos=t_stars).logits

    out = forward(m.params, tokens, config=m.config, mask=mask, iv=iv,
                  cache=KVCache.empty(m.config, len(prompts), full_tokens.shape[1]))
    pieces = [out.logits]
    for step in range(extra.shape[1]):
        out = forward(m.params, extra[:, step:step + 1], config=m.config, iv=iv, cache=out.cache)
        pieces.append(out.logits)
    cached = np.concatenate([np.asarray(p) for p in pieces], axis=1)
    np.testing.assert_allclose(cached[full_mask], np.asarray(full)[full_mask], rtol=0, atol=TOL)
    np.testing.assert_array_equal(np.asarray(out.cache.t_star), np.asarray(t_stars))


def _row_edits(m, n: int) -> list[Intervention]:
    ivs = []
    for row in range(n):
        iv = Intervention.identity(m.config).add_resid(1, row % 2, vec(20 + row, m.config.d_model),
                                                       rms_scaled=True)
        ivs.append(iv.zero_heads([(row, row)]).zero_neurons([(2, 5 * row)]))
    return ivs


def test_per_row_interventions_equal_separate_runs(m, batch):
    prompts, tokens, mask = batch
    ivs = _row_edits(m, len(prompts))
    per_row = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs, axis=1), *ivs)  # [L, B, ...]
    ours = np.asarray(forward(m.params, tokens, config=m.config, mask=mask, iv=per_row).logits)
    runs = [np.asarray(forward(m.params, tokens, config=m.config, mask=mask, iv=iv).logits) for iv in ivs]
    for row in range(len(prompts)):
        real = mask[row]
        np.testing.assert_allclose(ours[row, real], runs[row][row, real], rtol=0, atol=TOL, err_msg=f"row {row}")
        other = runs[(row + 1) % len(ivs)][row, real]
        assert np.abs(ours[row, real] - other).max() > 1e-2, "rows must get their own edits"


def test_vmap_over_variants_equals_a_loop(m, batch):
    _, tokens, mask = batch
    ivs = _row_edits(m, 3)
    run = lambda iv: forward(m.params, tokens, config=m.config, mask=mask, iv=iv, logits="last").logits
    swept = np.asarray(jax.vmap(run)(stack_variants(ivs)))
    for k, iv in enumerate(ivs):
        np.testing.assert_allclose(swept[k], np.asarray(run(iv)), rtol=0, atol=TOL, err_msg=f"variant {k}")
    assert np.abs(swept[0] - swept[1]).max() > 1e-2
