"""Run directories: manifest contents, resume, refusal on a changed identity, force-new-run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from absl import flags as absl_flags
from absl import logging

from emojax.model.config import ModelConfig
from emojax.runs import manifest as manifest_lib
from emojax.runs import InputError, ModelIdentity, RunDir, RunMismatchError, set_determinism, write_json

CONFIG = ModelConfig(family="llama", vocab_size=32, d_model=8, n_layers=2, n_heads=2, n_kv_heads=1,
                     head_dim=4, d_ff=16, rms_eps=1e-5, rope_theta=10000.0, tie_embeddings=True,
                     qkv_bias=False, name="tiny")
FLAGS = {"alpha": 8.0, "layers": [11, 20], "batch_size": 16, "out": "a", "progress": True}


@pytest.fixture
def model(tmp_path):
    weights = tmp_path / "model" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(b"\x01\x02\x03" * 1000)
    (weights.parent / "config.json").write_text("{}")
    return ModelIdentity.from_source("tiny", weights.parent, CONFIG)


@pytest.fixture
def dataset(tmp_path):
    path = tmp_path / "sev.jsonl"
    path.write_text('{"scenario": 0}\n')
    return path


def _open(path, model, dataset, flags=FLAGS, **kwargs):
    return RunDir.open(path, flags=flags, model=model, inputs={"sev": dataset}, **kwargs)


def test_manifest_records_identity_and_environment(tmp_path, model, dataset):
    with _open(tmp_path / "run", model, dataset) as run:
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    identity, env = manifest["identity"], manifest["environment"]
    assert identity["flags"] == FLAGS
    assert identity["model"]["name"] == "tiny" and identity["model"]["config"]["d_ff"] == 16
    assert identity["model"]["content_hash"] == manifest_lib.hash_path(tmp_path / "model")
    assert identity["inputs"]["sev"]["sha256"] == manifest_lib.hash_file(dataset)
    assert set(env["packages"]) == {"jax", "jaxlib", "flax", "numpy", "transformers", "emojax"}
    assert env["devices"]["count"] >= 1 and env["python"].count(".") == 2 and env["started"]
    assert run.model_hash == model.content_hash
    assert [i["resumed"] for i in run.invocations] == [False]


def test_model_hash_follows_content(tmp_path, model):
    (tmp_path / "model" / "weights.bin").write_bytes(b"\x01\x02\x04" * 1000)
    changed = ModelIdentity.from_source("tiny", tmp_path / "model", CONFIG)
    assert changed.content_hash != model.content_hash
    params = {"embed": np.ones((2, 2), np.float32), "layers": {"w": np.zeros(3)}}
    same = ModelIdentity.from_params("p", params, CONFIG).content_hash
    params["layers"]["w"] = np.array([0.0, 0.0, 1e-30])
    assert ModelIdentity.from_params("p", params, CONFIG).content_hash != same


def test_resume_with_same_identity(tmp_path, model, dataset):
    path = tmp_path / "run"
    with _open(path, model, dataset) as run:
        write_json(run.stage("elicit") / "out.json", {"v": 1})
        run.mark_done("elicit")
    # Non-semantic flags (output path, progress display) may change between invocations.
    with _open(path, model, dataset, flags={**FLAGS, "out": "elsewhere", "progress": False}) as run:
        assert run.is_done("elicit") and not run.is_done("steer")
        assert [i["resumed"] for i in run.invocations] == [False, True]
    assert json.loads((path / "elicit" / "out.json").read_text()) == {"v": 1}


@pytest.mark.parametrize("change, named", [
    ({"flags": {**FLAGS, "alpha": 4.0}}, "flag --alpha: 8.0 -> 4.0"),
    ({"flags": {**FLAGS, "batch_size": 32}}, "flag --batch_size: 16 -> 32"),
    ({"flags": {k: v for k, v in FLAGS.items() if k != "layers"}}, "flag --layers: [11, 20] -> absent"),
    ({"model": "other weights"}, "model content_hash"),
    ({"dataset": "other data"}, "input sev content"),
])
def test_changed_identity_is_refused(tmp_path, model, dataset, change, named):
    path = tmp_path / "run"
    with _open(path, model, dataset) as run:
        write_json(run.stage("elicit") / "out.json", {"v": 1})
    if "model" in change:
        (tmp_path / "model" / "weights.bin").write_bytes(b"changed")
        model = ModelIdentity.from_source("tiny", tmp_path / "model", CONFIG)
    if "dataset" in change:
        dataset.write_text('{"scenario": 1}\n')
    with pytest.raises(RunMismatchError) as err:
        _open(path, model, dataset, flags=change.get("flags", FLAGS))
    message = str(err.value)
    assert "\n" not in message and named in message and str(path) in message and "--force_new_run" in message
    assert json.loads((path / "elicit" / "out.json").read_text()) == {"v": 1}  # nothing touched


def test_force_new_run_moves_the_old_run_aside(tmp_path, model, dataset):
    path = tmp_path / "run"
    with _open(path, model, dataset) as run:
        write_json(run.stage("elicit") / "out.json", {"v": 1})
    with _open(path, model, dataset, flags={**FLAGS, "alpha": 4.0}, force_new=True) as run:
        assert run.moved_aside is not None and run.moved_aside.name.startswith("run.old-")
        assert json.loads((run.moved_aside / "elicit" / "out.json").read_text()) == {"v": 1}
        assert not (path / "elicit").exists()
        assert run.manifest["identity"]["flags"]["alpha"] == 4.0
    # Forcing again, within the same second, keeps both earlier runs.
    with _open(path, model, dataset, flags={**FLAGS, "alpha": 4.0}, force_new=True):
        pass
    assert len(list(tmp_path.glob("run.old-*"))) == 2


def test_a_directory_that_is_not_a_run_is_refused(tmp_path, model, dataset):
    path = tmp_path / "notes"
    path.mkdir()
    (path / "thesis.tex").write_text("precious")
    with pytest.raises(RunMismatchError, match="not a run directory"):
        _open(path, model, dataset)
    assert (path / "thesis.tex").read_text() == "precious"
    with _open(path, model, dataset, force_new=True) as run:
        assert (run.moved_aside / "thesis.tex").read_text() == "precious"


def test_log_file_receives_absl_logging(tmp_path, model, dataset):
    absl_logger = logging.get_absl_logger()
    previous_verbosity, previous_level = logging.get_verbosity(), absl_logger.level
    logging.set_verbosity(logging.INFO)
    try:
        with _open(tmp_path / "run", model, dataset):
            logging.info("inside the run %d", 42)
        logging.info("after the run")
    finally:  # the logger's own level too: set_verbosity alone would pin it, and later tests' caplog miss INFO
        logging.set_verbosity(previous_verbosity)
        absl_logger.setLevel(previous_level)
    text = (tmp_path / "run" / "run.log").read_text()
    assert "inside the run 42" in text and "after the run" not in text


def test_absl_flag_values_without_absl_own_flags(tmp_path):
    values = absl_flags.FlagValues()
    absl_flags.DEFINE_float("alpha", 8.0, "steering strength", flag_values=values)
    absl_flags.DEFINE_list("emotions", ["anger"], "emotions", flag_values=values)
    values(["prog", "--alpha=2"])
    assert manifest_lib.flags_dict(values) == {"alpha": 2.0, "emotions": ["anger"]}
    from absl.flags import FLAGS as GLOBAL  # holds absl.logging's own flags (verbosity, ...)
    assert "verbosity" not in manifest_lib.flags_dict(GLOBAL)


def test_git_state_outside_a_checkout_is_none(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest_lib, "_REPO_ROOT", tmp_path)
    assert manifest_lib.git_state() is None


def test_stage_names_are_checked(tmp_path, model, dataset):
    with _open(tmp_path / "run", model, dataset) as run:
        with pytest.raises(ValueError, match="stage name"):
            run.stage("../escape")


def test_set_determinism_sets_xla_flag(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    settings = set_determinism(3)
    assert settings["XLA_FLAGS"] == "--xla_cpu_enable_fast_math=false --xla_gpu_deterministic_ops=true"
    assert np.random.rand() == np.random.RandomState(3).rand()
    assert set_determinism(3)["XLA_FLAGS"] == settings["XLA_FLAGS"]  # idempotent


def test_missing_manifest_field_reads_as_input_error(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text('{"identity": ')
    with pytest.raises(InputError, match="manifest.json: not valid JSON"):
        RunDir(tmp_path / "run").manifest
