"""The command line of every pipeline stage: ``stages/<name>.py`` hands its step module here.

A step module (``bnr/steps/<name>.py``) declares its paths as two frozen dataclasses of
``Path`` fields, ``Inputs`` and ``Outputs``, and has one entry point
``run(cfg, inputs, outputs) -> dict`` (the numbers it wrote). Each field is a command-line
option of the stage (``Inputs.cam_checkpoint`` -> ``--cam-checkpoint``), so the stage's
``cmd`` in ``dvc.yaml`` is where its paths are written, once; ``tests/test_stage_deps.py``
checks that each input is a dep and each output an out of the stage.

Optional module attributes: ``check(cfg, inputs)`` validates what the stage reads (splits,
files) before any long work and before torchrun starts; ``DISTRIBUTED = True`` marks a
training stage (``runtime.nproc`` > 1 re-launches it under torchrun).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bnr.config.params import load_params
from bnr.curves import remove_stale_temporaries
from bnr.distributed import relaunch_under_torchrun
from bnr.errors import BnrError
from bnr.io import check_writable
from bnr.pipeline.declared import declared_params, declared_view
from bnr.pipeline.memory import check_memory
from bnr.pipeline.metrics_files import protocol_path


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (outputs not written, training resumable)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated()


def stage_name(step: ModuleType) -> str:
    """``bnr.steps.infer_seeds`` -> ``infer_seeds`` (its dvc.yaml stage)."""
    return step.__name__.rsplit(".", 1)[-1]


def option(name: str) -> str:
    """A path field's command-line option: ``cam_checkpoint`` -> ``--cam-checkpoint``."""
    return "--" + name.replace("_", "-")


def _parser(step: ModuleType) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"stages/{stage_name(step)}.py",
                                     description=(step.__doc__ or "").split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml", help="params file")
    for group, cls in (("inputs", step.Inputs), ("outputs", step.Outputs)):
        section = parser.add_argument_group(group)
        for f in dataclasses.fields(cls):
            section.add_argument(option(f.name), dest=f.name, type=Path, required=True,
                                 help=f.metadata.get("help", ""))
    return parser


def parse_stage_args(step: ModuleType, argv: Sequence[str]) -> tuple[str, Any, Any]:
    """(params file, ``step.Inputs``, ``step.Outputs``) from a stage's arguments."""
    args = vars(_parser(step).parse_args(list(argv)))
    pick = {cls: cls(**{f.name: args[f.name] for f in dataclasses.fields(cls)})
            for cls in (step.Inputs, step.Outputs)}
    return args["params"], pick[step.Inputs], pick[step.Outputs]


def stage_command(stage: str, dvc_yaml: Path = Path("dvc.yaml"),
                  variables: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """``(script, its arguments)`` of ``stage``'s ``cmd`` in ``dvc_yaml``, ``${name}``
    replaced from ``variables`` (the stage's own paths; tests run steps with them)."""
    from bnr.config.yaml_load import load_yaml

    cmd = load_yaml(dvc_yaml)["stages"][stage]["cmd"]
    for key, value in (variables or {}).items():
        cmd = cmd.replace("${" + key + "}", value)
    words = shlex.split(cmd)
    script = next(i for i, w in enumerate(words) if w.endswith(".py"))
    return words[script], words[script + 1:]


def stage_paths(step: ModuleType, dvc_yaml: Path = Path("dvc.yaml"),
                variables: dict[str, str] | None = None) -> tuple[Any, Any]:
    """``(Inputs, Outputs)`` of ``step`` as its ``cmd`` in ``dvc_yaml`` gives them."""
    _, args = stage_command(stage_name(step), dvc_yaml, variables)
    _, inputs, outputs = parse_stage_args(step, args)
    return inputs, outputs


def output_paths(outputs: Any) -> list[Path]:
    """Every path a stage writes: its ``Outputs`` fields and the protocol of its ``metrics``."""
    paths = [Path(getattr(outputs, f.name)) for f in dataclasses.fields(outputs)]
    metrics = getattr(outputs, "metrics", None)
    return paths + ([protocol_path(metrics)] if metrics is not None else [])


def stage_main(step: ModuleType, argv: Sequence[str] | None = None) -> None:
    """Parse the stage's arguments, load and validate the params, run ``step``; a BnrError is
    one line and exit status 1.

    When ``dvc.yaml`` in the working directory has this stage, the step sees only the params
    the stage declares there (:mod:`bnr.pipeline.declared`): reading any other key stops with one
    line.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    params_file, inputs, outputs = parse_stage_args(step, argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from files, never from a hub
    signal.signal(signal.SIGTERM, _on_sigterm)
    name = stage_name(step)
    try:
        keys = declared_params(name)
        params = load_params(params_file)
        check_writable(output_paths(outputs))  # before the temporaries are cleaned
        if int(os.environ.get("RANK", "0")) == 0:  # hygiene: a killed run's temporaries
            for tmp in remove_stale_temporaries(output_paths(outputs)):
                print(f"removed {tmp} (left by an interrupted run)")
        if keys is not None:
            params = declared_view(params, name, keys)
        check_memory(params, name)  # a crop, scale or sweep step this machine cannot hold
        if hasattr(step, "check"):
            step.check(params, inputs)  # splits, images, masks: before any long work
        if getattr(step, "DISTRIBUTED", False):
            nproc = params.runtime.nproc
            script = sys.argv[0] if sys.argv[0].endswith(".py") else f"stages/{name}.py"
            code = relaunch_under_torchrun(nproc, [script, *argv])
            if code is not None:
                if code:
                    raise BnrError(f"{name}: {nproc} torchrun processes failed "
                                   f"(exit status {code}; see above)")
                return
        step.run(params, inputs, outputs)
    except BnrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"{what}; outputs were not written (training resumes from its checkpoint)",
              file=sys.stderr)
        sys.exit(143 if isinstance(exc, Terminated) else 130)
