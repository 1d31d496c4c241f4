"""Multi-host start-up: join the JAX distributed runtime when this process is one of several.

Call `initialize_distributed()` first thing in a launcher, before any JAX computation. On one
host it does nothing, so the same command runs on a laptop, a TPU VM and every host of a pod
slice. Then every host runs the same program on the same data; only the primary host writes.
"""
from __future__ import annotations

import os
from typing import Mapping

import jax
from absl import logging
from jax.experimental import multihost_utils

# Set by tpu/run.sh on pod slices, for clusters where nothing else in the environment says so.
MULTIHOST_ENV = "EMOJAX_MULTIHOST"


def _count(env: Mapping[str, str], name: str) -> int:
    value = env.get(name, "").strip()
    try:
        return int(value) if value else 1
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def multi_host_requested(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment describes a run over several processes (hosts)."""
    env = os.environ if env is None else env
    if env.get(MULTIHOST_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    tpu_hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]
    if len(tpu_hosts) > 1:
        return True
    return _count(env, "SLURM_NTASKS") > 1 or _count(env, "OMPI_COMM_WORLD_SIZE") > 1


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
    """Join the distributed runtime when running multi-host; return whether it is joined.

    With no arguments JAX finds the coordinator itself (TPU pod metadata, SLURM, Open MPI); pass
    them to override. A single host (nothing in the environment asks for more) is left alone.
    """
    if jax.distributed.is_initialized():
        return True
    explicit = any(a is not None for a in (coordinator_address, num_processes, process_id))
    if not explicit and not multi_host_requested():
        return False
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    logging.info("joined the distributed runtime as process %d of %d (%d local / %d global devices)",
                 jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
    return True


def is_primary_host() -> bool:
    """True on the one host that writes run directories, tables and plots (process 0)."""
    return jax.process_index() == 0


def sync_hosts(tag: str) -> None:
    """Wait until every host reaches this point (e.g. before reading what the primary wrote).
    Nothing to wait for on a single host."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(tag)
