"""Scale-out: logical axis rules, placement helpers, multi-host start-up, and sharded runs that
must equal single-device runs (the latter on 8 forced CPU devices, in a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from conftest import subprocess_env
from emojax import parallel
from emojax.model.config import ModelConfig
from emojax.model.params import param_shapes
from emojax.parallel import distributed

CHECKS_SCRIPT = Path(__file__).with_name("parallel_checks.py")
TOLERANCE = 1e-5


def tiny(**changes) -> ModelConfig:
    base = dict(family="llama", vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                d_ff=64, rms_eps=1e-6, rope_theta=10000.0, tie_embeddings=True, qkv_bias=False)
    return ModelConfig(**{**base, **changes})


MESH_4x2 = AbstractMesh((4, 2), ("data", "model"))


# --- logical axes and rules -------------------------------------------------------------------

@pytest.mark.parametrize("cfg", [tiny(), tiny(tie_embeddings=False), tiny(family="qwen2", qkv_bias=True)],
                         ids=["llama-tied", "llama-untied", "qwen2"])
def test_every_parameter_has_one_logical_name_per_dimension(cfg):
    is_shape = lambda x: isinstance(x, tuple) and all(isinstance(d, int) for d in x)  # noqa: E731
    shapes = param_shapes(cfg)
    axes = parallel.param_logical_axes(cfg)
    assert jax.tree_util.tree_structure(shapes, is_leaf=is_shape) == \
        jax.tree_util.tree_structure(axes, is_leaf=lambda x: isinstance(x, tuple))
    flat_axes = jax.tree_util.tree_leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    for shape, names in zip(jax.tree_util.tree_leaves(shapes, is_leaf=is_shape), flat_axes):
        assert len(shape) == len(names)


def test_default_rules_are_megatron_style():
    cfg = tiny(family="qwen2", qkv_bias=True, tie_embeddings=False)
    axes = parallel.param_logical_axes(cfg)
    spec = lambda a: parallel.logical_to_spec(a, mesh=MESH_4x2)  # noqa: E731
    assert spec(axes["layers"]["wq"]) == P(None, None, "model")
    assert spec(axes["layers"]["wo"]) == P(None, "model", None)
    assert spec(axes["layers"]["w_down"]) == P(None, "model", None)
    assert spec(axes["layers"]["bv"]) == P(None, "model")
    assert spec(axes["embed"]) == P(None, None)
    assert spec(axes["lm_head"]) == P(None, None)
    assert spec(parallel.ACTIVATION_AXES["tokens"]) == P("data", None)


def test_heads_are_split_only_on_head_boundaries():
    smollm2_shape = tiny(vocab_size=512, d_model=576, n_heads=9, n_kv_heads=3, head_dim=64, d_ff=1536)
    layers = parallel.param_shardings(smollm2_shape, MESH_4x2)["layers"]
    assert layers["wq"].spec == P(None, None, None)      # 9 heads do not split in 2 (576 columns would)
    assert layers["wk"].spec == P(None, None, None)
    assert layers["w_up"].spec == P(None, None, "model")
    even = parallel.param_shardings(tiny(n_heads=4, n_kv_heads=2), MESH_4x2)["layers"]
    assert even["wq"].spec == P(None, None, "model") and even["wk"].spec == P(None, None, "model")


def test_a_mesh_axis_shards_one_dimension_only():
    assert parallel.logical_to_spec(("variants", "batch", "mlp"), mesh=MESH_4x2) == P("data", None, "model")


def test_indivisible_dimension_falls_back_to_fewer_mesh_axes():
    rules = parallel.rules_from_config("batch=data+model")
    assert parallel.logical_to_spec(("batch",), rules, MESH_4x2, (16,)) == P(("data", "model"))
    assert parallel.logical_to_spec(("batch",), rules, MESH_4x2, (12,)) == P("data")
    assert parallel.logical_to_spec(("batch",), rules, MESH_4x2, (6,)) == P(None)


def test_rules_change_by_config_not_code():
    rules = parallel.rules_from_config("mlp=none, vocab=model")
    assert parallel.logical_to_spec(("layers", "embed", "mlp"), rules) == P(None, None, None)
    assert parallel.logical_to_spec(("vocab", "embed"), rules) == P("model", None)
    assert parallel.rules_from_config({"q_heads": None, "batch": ["data", "model"]}) == (
        ("variants", ("data",)), ("kv_heads", ("model",)), ("mlp", ("model",)),
        ("q_heads", ()), ("batch", ("data", "model")))
    assert parallel.rules_from_config(parallel.rules_to_text(rules)) == rules
    assert parallel.rules_from_config(None) == parallel.DEFAULT_RULES


@pytest.mark.parametrize("text, message", [("mlp=modle", "unknown mesh axis"), ("mlp", "logical_name=mesh_axes"),
                                           ("batch=data+data", "repeated")])
def test_bad_rules_are_rejected_with_their_name(text, message):
    with pytest.raises(ValueError, match=message):
        parallel.rules_from_config(text)


def test_rules_under_vmap_free_the_mapped_mesh_axes():
    inner = parallel.rules_under_vmap(parallel.DEFAULT_RULES)
    assert dict(inner)["batch"] == () and dict(inner)["mlp"] == ("model",)


# --- placement on the single device of this process ---------------------------------------------

def test_make_mesh_checks_the_device_count():
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data", "model") and mesh.size == jax.device_count()
    with pytest.raises(ValueError, match="positive divisor"):
        parallel.make_mesh(model=3 * jax.device_count() + 1)
    with pytest.raises(ValueError, match="devices"):
        parallel.make_mesh(data=2 * jax.device_count())


def test_maybe_shard_is_a_no_op_without_a_mesh():
    x = jnp.ones((2, 3))
    assert parallel.maybe_shard(x, None, ("batch", "embed")) is x


def test_maybe_shard_rejects_mismatched_axes():
    with pytest.raises(ValueError, match="do not match"):
        parallel.maybe_shard(jnp.ones((2, 3)), parallel.make_mesh(), ("batch",))


def test_shard_params_names_a_bad_tree():
    cfg = tiny()
    params = jax.tree_util.tree_map(np.zeros, param_shapes(cfg), is_leaf=lambda x: isinstance(x, tuple))
    del params["layers"]["wq"]
    with pytest.raises(ValueError, match="shard_params: missing layers.wq"):
        parallel.shard_params(params, parallel.make_mesh(), cfg)


def test_shard_batch_needs_one_leading_size():
    with pytest.raises(ValueError, match="same leading axis"):
        parallel.shard_batch({"tokens": np.zeros((3, 4)), "mask": np.zeros((2, 4))}, parallel.make_mesh())


def test_shard_batch_and_unpad_round_trip():
    tokens = np.arange(12).reshape(3, 4)
    placed, n = parallel.shard_batch(tokens, parallel.make_mesh())
    np.testing.assert_array_equal(parallel.to_host(parallel.unpad(placed, n)), tokens)


# --- multi-host start-up ------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({}, False),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2"}, False),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),
    ({"EMOJAX_MULTIHOST": "1"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, True),
    ({"SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "4"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
])
def test_multi_host_detection(env, expected):
    assert distributed.multi_host_requested(env) is expected


def test_bad_process_count_is_named():
    with pytest.raises(ValueError, match="SLURM_NTASKS"):
        distributed.multi_host_requested({"SLURM_NTASKS": "four"})


def test_single_host_is_left_alone(monkeypatch):
    for name in ("EMOJAX_MULTIHOST", "JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES", "SLURM_NTASKS",
                 "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize_distributed() is False
    assert distributed.is_primary_host()
    distributed.sync_hosts("single-host")


# --- sharded == single device, on 8 forced CPU devices -------------------------------------------

MODEL_CHECKS = ("forward_model2", "cached_decode_model4", "head_sweep_vmap")
STAGE_CHECKS = ("head_and_sublayer_scans", "steered_generation", "mesh_arguments")


def start_checks(*names: str) -> subprocess.Popen:
    """Start checks of parallel_checks.py in a fresh process that sees 8 CPU devices."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8".strip()
    env = subprocess_env(XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, str(CHECKS_SCRIPT), *names], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish_checks(process: subprocess.Popen) -> dict[str, dict]:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-4000:]
    return {r["check"]: r for r in map(json.loads, stdout.splitlines())}


@pytest.fixture(scope="module")
def check_processes():
    """Both groups of checks, started together: each spends much of its time compiling on one core."""
    processes = {"model": start_checks(*MODEL_CHECKS), "stage": start_checks(*STAGE_CHECKS)}
    yield processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module")
def sharded_results(check_processes) -> dict[str, dict]:
    return finish_checks(check_processes["model"])


@pytest.fixture(scope="module")
def sharded_stage_results(check_processes) -> dict[str, dict]:
    return finish_checks(check_processes["stage"])


def test_model_parallel_forward_equals_single_device(sharded_results):
    r = sharded_results["forward_model2"]
    assert r["max_abs_diff"] < TOLERANCE
    assert r["padded_rows"] == 8  # 6 rows padded to a multiple of data=4
    assert (r["wq"], r["w_down"], r["bk"]) == ("P(None, None, 'model')", "P(None, 'model', None)", "P(None, 'model')")
    assert r["logits"] == "P('data',)"


def test_model_parallel_cached_decoding_equals_single_device(sharded_results):
    r = sharded_results["cached_decode_model4"]
    assert r["max_abs_diff"] < TOLERANCE
    assert r["cache_k"] == "P(None, 'data', None, 'model', None)"
    assert r["w_gate"] == "P(None, None, 'model')"


def test_data_parallel_intervention_sweep_equals_single_device(sharded_results):
    r = sharded_results["head_sweep_vmap"]
    assert r["max_abs_diff"] < TOLERANCE
    assert r["variant_spread"] > 1e-3  # the variants really differ, so equality means something
    assert r["variants"] == 12 and r["head_scale"] == "P('data', None, None)" and r["logits"] == "P('data',)"


@pytest.mark.slow
def test_sharded_head_and_sublayer_scans_equal_single_device(sharded_stage_results):
    r = sharded_stage_results["head_and_sublayer_scans"]
    # Read-out scores reach tens here: compare relative to their size.
    assert r["max_abs_diff"] < TOLERANCE * max(1.0, r["ref_scale"])
    assert r["effect_spread"] > 1e-3
    assert r["prefix_k"] == "P(None, 'data', None, 'model')"  # rows over data, kv heads over model


@pytest.mark.slow
def test_sharded_steered_generation_equals_single_device(sharded_stage_results):
    r = sharded_stage_results["steered_generation"]
    assert r["tokens_equal"] and r["max_abs_diff"] == 0.0
    assert r["steering_changes_tokens"]  # the steering matters, so equality means something


@pytest.mark.slow
def test_mesh_arguments_of_generate_and_capture_prefix_keep_results(sharded_stage_results):
    r = sharded_stage_results["mesh_arguments"]
    assert r["tokens_equal"] and r["rows"] == 5
    assert r["max_abs_diff"] < 1e-4
    assert r["prefix_k_8_rows"] == "P(None, 'data', None, 'model')"
    assert r["prefix_k_5_rows"] == "P(None, None, None, 'model')"  # 5 rows do not split over data=4


@pytest.mark.parametrize("text, shape", [("none", None), ("", None), ("auto", {"data": 1, "model": 1}),
                                         ("1x1", {"data": 1, "model": 1})])
def test_mesh_from_spec(text, shape):
    mesh = parallel.mesh_from_spec(text)
    assert (None if mesh is None else dict(mesh.shape)) == shape


@pytest.mark.parametrize("text", ["8", "2x", "ax1", "0x1"])
def test_mesh_from_spec_names_a_bad_flag(text):
    with pytest.raises(ValueError, match="--mesh"):
        parallel.mesh_from_spec(text)
