"""Helpers shared by the thin stage CLIs in ``stages/``."""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable

import numpy as np
import torch

from bnr.config import Params, load_params
from bnr.errors import BnrError


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run_stage(main: Callable[[Params], None], description: str) -> None:
    """Parse ``--params``, load and validate them, run ``main``; BnrError -> one line, exit 1."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--params", default="params.yaml", help="params file")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from files, never from a hub
    try:
        params = load_params(args.params)
        main(params)
    except BnrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted; outputs were not written (training resumes from its checkpoint)",
              file=sys.stderr)
        sys.exit(130)
