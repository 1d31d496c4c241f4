"""Malformed inputs at each boundary: one-line InputError naming the input; earlier outputs intact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from emojax.model.config import ModelConfig
from emojax.runs import (EMOTIONS, InputError, RunDir, check_array_file, check_circuit, check_emotions,
                         check_layer_index, read_json, read_jsonl, write_json, write_jsonl, write_npz)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "official"
CONFIG = ModelConfig(family="llama", vocab_size=32, d_model=8, n_layers=4, n_heads=3, n_kv_heads=1,
                     head_dim=4, d_ff=16, rms_eps=1e-5, rope_theta=10000.0, tie_embeddings=True,
                     qkv_bias=False, name="tiny")
MODEL_HASH = "a" * 64
OTHER_HASH = "b" * 64


def one_line_naming(err: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(err.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)


def circuit_record(**overrides) -> dict:
    layers = [{"layer": l, "mlp": {"k": 2, "neurons": [l, 15]}, "attention": {"k": 1, "heads": [l % 3]}}
              for l in range(4)]
    return {"emotion": "anger", "layers": layers, **overrides}


# --- flags ---------------------------------------------------------------------------------------

def test_layer_flag():
    assert check_layer_index("layer", 3, CONFIG.n_layers) == 3
    for bad, says in [(4, "out of range"), (-1, "out of range"), ("3", "not an integer"), (True, "not an integer")]:
        with pytest.raises(InputError) as err:
            check_layer_index("layer", bad, CONFIG.n_layers)
        one_line_naming(err, "--layer=", says)
    with pytest.raises(InputError) as err:
        check_layer_index("readout_layer", 30, 30)
    one_line_naming(err, "--readout_layer=30", "30 layers", "0..29")


def test_emotions_flag():
    assert check_emotions(["fear", "anger"]) == ("anger", "fear")  # canonical order
    assert check_emotions("disgust, sadness") == ("sadness", "disgust")
    assert check_emotions(EMOTIONS) == EMOTIONS
    for bad, says in [(["joy"], "'joy'"), ([], "empty"), (["fear", "fear"], "twice: fear")]:
        with pytest.raises(InputError) as err:
            check_emotions(bad, flag_name="target_emotions")
        one_line_naming(err, "--target_emotions", says)


# --- data files ----------------------------------------------------------------------------------

def test_truncated_jsonl(tmp_path):
    path = tmp_path / "generations.jsonl"
    write_jsonl(path, [{"key": i, "gen_text": "x" * 20} for i in range(5)])
    assert len(read_jsonl(path)) == 5
    path.write_bytes(path.read_bytes()[:-15])  # a copy or write cut short
    with pytest.raises(InputError) as err:
        read_jsonl(path)
    one_line_naming(err, str(path), "line 5", "truncated")


def test_corrupt_line_in_the_middle(tmp_path):
    path = tmp_path / "sev.jsonl"
    path.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(InputError) as err:
        read_jsonl(path)
    one_line_naming(err, str(path), "line 2", "not valid JSON")
    assert "truncated" not in str(err.value)


def test_missing_and_broken_json(tmp_path):
    with pytest.raises(InputError) as err:
        read_jsonl(tmp_path / "absent.jsonl")
    one_line_naming(err, "absent.jsonl", "not found")
    (tmp_path / "c.json").write_text('{"layers": [1, 2')
    with pytest.raises(InputError) as err:
        read_json(tmp_path / "c.json")
    one_line_naming(err, "c.json", "line 1")


# --- array artefacts -----------------------------------------------------------------------------

def test_directions_of_another_model(tmp_path):
    path = tmp_path / "directions.npz"
    directions = np.zeros((CONFIG.n_layers, 6, CONFIG.d_model), np.float32)
    write_npz(path, {"directions": directions}, meta={"model_hash": OTHER_HASH, "model_name": "Llama-3.2-3B"})
    with pytest.raises(InputError) as err:
        check_array_file(path, {"directions": (CONFIG.n_layers, 6, CONFIG.d_model)}, MODEL_HASH)
    one_line_naming(err, str(path), OTHER_HASH[:12], MODEL_HASH[:12], "Llama-3.2-3B")


def test_directions_of_the_wrong_shape(tmp_path):
    path = tmp_path / "directions.npz"
    write_npz(path, {"directions": np.zeros((28, 6, 3072), np.float32)}, meta={"model_hash": MODEL_HASH})
    with pytest.raises(InputError) as err:
        check_array_file(path, {"directions": (CONFIG.n_layers, 6, CONFIG.d_model)}, MODEL_HASH)
    one_line_naming(err, str(path), "'directions'", "(28, 6, 3072)", "(4, 6, 8)")
    with pytest.raises(InputError) as err:
        check_array_file(path, {"sigma": (None, CONFIG.n_layers)}, MODEL_HASH)
    one_line_naming(err, str(path), "no array 'sigma'")


def test_matching_artefact_is_returned(tmp_path):
    path = tmp_path / "directions.npz"
    directions = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    write_npz(path, {"directions": directions}, meta={"model_hash": MODEL_HASH})
    arrays = check_array_file(path, {"directions": (4, None, 8)}, MODEL_HASH)
    np.testing.assert_array_equal(arrays["directions"], directions)


def test_unstamped_or_corrupt_array_file(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, directions=np.zeros(3))
    with pytest.raises(InputError) as err:
        check_array_file(path, {}, MODEL_HASH)
    one_line_naming(err, str(path), "no model_hash")
    check_array_file(path, {"directions": (3,)}, model_hash=None)  # explicitly not model-bound
    broken = tmp_path / "broken.npz"
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(InputError) as err:
        check_array_file(broken, {}, None)
    one_line_naming(err, str(broken), "not a readable npz")


# --- circuits ------------------------------------------------------------------------------------

def test_valid_circuit_passes():
    check_circuit(circuit_record(), CONFIG)
    from emojax.circuit import Circuit
    check_circuit(Circuit.from_record(circuit_record()), CONFIG)


@pytest.mark.parametrize("mutate, says", [
    (lambda c: c["layers"][2]["mlp"].update(neurons=[3, 16]), "layer 2 neuron id 16 is out of range (d_ff = 16)"),
    (lambda c: c["layers"][1]["mlp"].update(neurons=[-1]), "layer 1 neuron id -1 is out of range"),
    (lambda c: c["layers"][0]["attention"].update(heads=[3]), "layer 0 head id 3 is out of range (n_heads = 3)"),
    (lambda c: c["layers"].append({"layer": 4, "mlp": {"neurons": []}, "attention": {"heads": []}}),
     "layer 4 is out of range (n_layers = 4)"),
    (lambda c: c["layers"][3]["mlp"].update(neurons=[1, 1]), "layer 3 lists a neuron twice"),
    (lambda c: c["layers"][3]["mlp"].update(neurons=[1.5]), "neuron id 1.5 is not an integer"),
    (lambda c: c.update(emotion="joy"), "unknown emotion 'joy'"),
    (lambda c: c.pop("layers"), "malformed circuit"),
])
def test_bad_circuit(mutate, says):
    circuit = circuit_record()
    mutate(circuit)
    with pytest.raises(InputError) as err:
        check_circuit(circuit, CONFIG, source="anger.json")
    one_line_naming(err, "anger.json", says)


def test_circuit_of_another_model_by_hash():
    with pytest.raises(InputError) as err:
        check_circuit(circuit_record(model_hash=OTHER_HASH), CONFIG, source="c.json", model_hash=MODEL_HASH)
    one_line_naming(err, "c.json", OTHER_HASH[:12])


def test_published_circuit_does_not_fit_a_smaller_model():
    path = SHARED / "llama32_3b" / "global_circuit" / "anger.json"
    if not path.exists():
        pytest.skip("shared official data not available")
    record = read_json(path)
    llama_3b = CONFIG.replace(n_layers=28, n_heads=24, d_ff=8192)
    check_circuit(record, llama_3b, source=str(path))
    smollm2 = CONFIG.replace(n_layers=30, n_heads=9, d_ff=1536)
    with pytest.raises(InputError) as err:
        check_circuit(record, smollm2, source=str(path))
    one_line_naming(err, str(path), "is out of range")


# --- judge replies -------------------------------------------------------------------------------

def test_judge_reply_that_is_not_json():
    prompts = pytest.importorskip("emojax.method.prompts")
    if not hasattr(prompts, "parse_judge_reply"):
        pytest.skip("emojax.method.prompts.parse_judge_reply not available")
    # Not JSON, or JSON cut short: no match, flagged as a judge error (method §4.3), never raised.
    for reply in ("Sure! The style is clearly angry.", '{"match": 1, "reas'):
        match, _, error = prompts.parse_judge_reply(reply)
        assert match == 0 and "JSON" in error and "\n" not in error
    assert prompts.parse_judge_reply('{"match": 1, "reason": "angry tone"}') == (1, "angry tone", None)


# --- a stage that meets bad input leaves the run as it was ---------------------------------------

def steer_stage(run: RunDir, directions_path: Path, layer: int, circuit_path: Path) -> None:
    """The pattern every launcher follows: check all inputs, then compute and write."""
    check_layer_index("layer", layer, CONFIG.n_layers)
    arrays = check_array_file(directions_path, {"directions": (CONFIG.n_layers, 6, CONFIG.d_model)},
                              run.model_hash)
    check_circuit(read_json(circuit_path), CONFIG, source=str(circuit_path))
    write_npz(run.stage("steer") / "steered.npz", {"d": arrays["directions"][layer]})
    run.mark_done("steer")


def test_bad_inputs_leave_earlier_outputs_intact(tmp_path):
    from emojax.runs import ModelIdentity
    model = ModelIdentity("tiny", "<test>", MODEL_HASH, {"n_layers": 4})
    run_path = tmp_path / "run"
    flags = {"alpha": 8.0}
    with RunDir.open(run_path, flags=flags, model=model) as run:
        elicit = run.stage("elicit")
        good_dirs = elicit / "directions.npz"
        write_npz(good_dirs, {"directions": np.ones((4, 6, 8), np.float32)}, meta={"model_hash": MODEL_HASH})
        write_jsonl(elicit / "generations.jsonl", [{"key": i} for i in range(3)])
        run.mark_done("elicit")

    foreign = tmp_path / "foreign.npz"
    write_npz(foreign, {"directions": np.ones((4, 6, 8), np.float32)}, meta={"model_hash": OTHER_HASH})
    good_circuit, bad_circuit = tmp_path / "good.json", tmp_path / "bad.json"
    write_json(good_circuit, circuit_record())
    bad = circuit_record()
    bad["layers"][0]["mlp"]["neurons"] = [99]
    write_json(bad_circuit, bad)

    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(run_path)): p.read_bytes() for p in sorted(run_path.rglob("*"))
                if p.is_file() and p.name not in ("run.log", "invocations.jsonl")}

    before = snapshot()
    for args, names in [((good_dirs, 9, good_circuit), "--layer=9"),
                        ((foreign, 1, good_circuit), str(foreign)),
                        ((good_dirs, 1, bad_circuit), str(bad_circuit))]:
        with RunDir.open(run_path, flags=flags, model=model) as run:
            with pytest.raises(InputError) as err:
                steer_stage(run, *args)
        one_line_naming(err, names)
        assert snapshot() == before and not (run_path / "steer" / "done.json").exists()

    with RunDir.open(run_path, flags=flags, model=model) as run:
        steer_stage(run, good_dirs, 1, good_circuit)
    assert run.is_done("steer") and {k: v for k, v in snapshot().items() if k in before} == before
    assert json.loads((run_path / "elicit" / "done.json").read_text())
