"""Print, as JSON, the flags each launcher module defines and its --help text.

Usage: python launcher_flags.py experiments.A experiments.B ...

A launcher's flags are every flag that a module of this project registered while the launcher was
imported: the launcher's own and the shared ones of emojax.launch.launcher. absl lists in --help only
the flags filed under the launcher itself, so each must be filed there. The launchers are imported
one after another in this one process; each one's flags, and every experiments module it imported, are
removed before the next is imported, so a launcher that imports another launcher's flags is caught
whatever the order. `undefined` lists the `FLAGS.<name>` that the launcher's own source reads but that
nothing it imported defined: a flag that only another launcher defines.
"""
from __future__ import annotations

import importlib
import json
import re
import sys
from pathlib import Path

from absl import flags

FLAGS = flags.FLAGS
PROJECT = ("emojax", "experiments")


def project_flags() -> dict[str, list[flags.Flag]]:
    return {module: list(module_flags) for module, module_flags in FLAGS.flags_by_module_dict().items()
            if module.split(".")[0] in PROJECT and module_flags}


def flags_read(module_name: str) -> set[str]:
    """The flag names `FLAGS.<name>` in the source of a module (FlagValues' own methods aside)."""
    source = Path(sys.modules[module_name].__file__).read_text(encoding="utf-8")
    return {n for n in re.findall(r"\bFLAGS\.([A-Za-z_]\w*)", source) if not hasattr(flags.FlagValues, n)}


report = {}
for module_name in sys.argv[1:]:
    importlib.import_module(module_name)
    owned = project_flags()
    report[module_name] = {"owners": {module: [f.name for f in fs] for module, fs in owned.items()},
                           "help": FLAGS.module_help(module_name),
                           "flag_help": {f.name: f.help for fs in owned.values() for f in fs},
                           "undefined": sorted(n for n in flags_read(module_name) if n not in FLAGS)}
    for name in {f.name for fs in owned.values() for f in fs}:
        delattr(FLAGS, name)
    for name in [m for m in sys.modules if m.split(".")[0] == "experiments"]:
        del sys.modules[name]
print(json.dumps(report))
