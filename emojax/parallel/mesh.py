"""The device mesh: a grid of devices with axes ('data', 'model') (design.md §7)."""
from __future__ import annotations

from typing import Sequence

import jax
from jax.sharding import AxisType, Mesh

from emojax.parallel.rules import MESH_AXES


def make_mesh(data: int | None = None, model: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'model') mesh over `devices` (default: every device of every host).

    `data` defaults to all devices left over after `model`. The axes use automatic sharding
    propagation (GSPMD), so sharded inputs are all a jitted function needs.
    """
    devices = list(jax.devices() if devices is None else devices)
    if model < 1 or len(devices) % model:
        raise ValueError(f"make_mesh: model={model} must be a positive divisor of the {len(devices)} devices")
    data = len(devices) // model if data is None else data
    if data < 1 or data * model != len(devices):
        raise ValueError(f"make_mesh: data={data} x model={model} = {data * model} devices, "
                         f"but {len(devices)} were given; pass devices=... to use a subset")
    return jax.make_mesh((data, model), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def mesh_from_spec(spec: str | None) -> Mesh | None:
    """The mesh a `--mesh` flag names: "" or "none" -> None (one device, no placement); "auto" ->
    every device on 'data'; "DxM" (e.g. "8x1", "4x2") -> data=D, model=M."""
    text = (spec or "").strip().lower()
    if text in ("", "none"):
        return None
    if text == "auto":
        return make_mesh()
    parts = text.split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--mesh={spec!r}: expected 'none', 'auto' or DATAxMODEL such as '8x1' or '4x2'")
    return make_mesh(data=int(parts[0]), model=int(parts[1]))
