"""Benchmark: CPU training step time idle and next to one busy process, per thread policy.

Inputs: a ``conformer_tiny`` CAM network (bnr.models.conformer, 7 classes) trained on random
(``--batch``, 3, ``--size``, ``--size``) float32 images with the BNR loss
(bnr.cam.losses.total_loss) and AdamW, in float32 on the CPU: one step = forward + loss + backward +
optimizer step, the work of one train_cam step on the synthetic preset (batch 16 of 128 x 128).

Policies, each run in a fresh Python process (OpenMP reads ``OMP_WAIT_POLICY`` when it loads, and
torch's inter-op threads can be set only once)::

    all_cores      torch.set_num_threads(available cores)       the default before issue 13
    one            1 thread
    auto           bnr.threads: one thread per core idle at start  (runtime.num_threads: 0 now)
    passive        all cores, OMP_WAIT_POLICY=PASSIVE (threads sleep instead of spinning)
    auto_passive   auto + OMP_WAIT_POLICY=PASSIVE
    interop1       all cores, torch.set_num_interop_threads(1)

Time: median seconds of ``--steps`` steps after ``--warmup`` untimed ones, per policy, first
idle, then with one competing busy process (a single-threaded Python spin loop, started 1 s
before the policy's process). Printed side by side with ``loaded / idle`` and the idle time
relative to ``all_cores`` idle. Issue 13's target: loaded <= 2.5x idle, and idle no slower than
``all_cores``. Numbers are only meaningful on a machine with nothing else running.

Run: ``python bench/threads.py`` (``--smoke`` checks that it works: tiny sizes, one step; its
numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POLICIES = {  # name: (threads: "all" | "one" | "auto", extra environment, inter-op threads)
    "all_cores": ("all", {}, None),
    "one": ("one", {}, None),
    "auto": ("auto", {}, None),
    "passive": ("all", {"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "auto_passive": ("auto", {"OMP_WAIT_POLICY": "PASSIVE"}, None),
    "interop1": ("all", {}, 1),
}


def apply_policy(name: str) -> int:
    """Set this process's torch threads for policy ``name``; returns the intra-op threads."""
    import torch

    from bnr.threads import auto_threads, available_cores, free_cores

    kind, _, interop = POLICIES[name]
    if interop is not None:
        torch.set_num_interop_threads(interop)
    cores = available_cores()
    threads = {"all": cores, "one": 1, "auto": auto_threads(cores, free_cores())}[kind]
    torch.set_num_threads(threads)
    return threads


def step_times(batch: int, size: int, steps: int, warmup: int) -> list[float]:
    """Seconds of each of ``steps`` training steps (after ``warmup``) in this process."""
    import torch

    from bnr.cam.losses import total_loss
    from bnr.models.conformer import create_conformer

    torch.manual_seed(0)
    model = create_conformer("conformer_tiny", num_classes=7).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    images = torch.randn(batch, 3, size, size)
    labels = torch.zeros(batch, 7)
    labels[:, 0] = 1.0
    labels[torch.arange(batch), 1 + torch.arange(batch) % 6] = 1.0
    times = []
    for i in range(warmup + steps):
        started = time.perf_counter()
        loss, _ = total_loss(model(images), labels, "bnr", 1.0, model.cfg.depth)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def run_policy(name: str, args: argparse.Namespace) -> dict:
    """Time policy ``name`` in a fresh process: ``{"median": s, "threads": n}``."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                            "OMP_WAIT_POLICY")}
    env.update(POLICIES[name][1])
    cmd = [sys.executable, __file__, "--worker", name, "--batch", str(args.batch), "--size",
           str(args.size), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def measure(names: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """``{policy: {"idle": median s, "loaded": median s, "threads": [idle n, loaded n]}}``."""
    rows: dict[str, dict] = {}
    for name in names:
        idle = run_policy(name, args)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(args.busy_lead)
            loaded = run_policy(name, args)
        finally:
            busy.kill()
            busy.wait()
        rows[name] = {"idle": idle["median"], "loaded": loaded["median"],
                      "threads": [idle["threads"], loaded["threads"]]}
    return rows


def table(rows: dict[str, dict]) -> str:
    base = rows.get("all_cores", next(iter(rows.values())))["idle"]
    lines = ["| policy | threads idle/loaded | idle s | loaded s | loaded/idle | idle/all_cores |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['threads'][0]}/{r['threads'][1]} | {r['idle']:.3f} | "
                     f"{r['loaded']:.3f} | {r['loaded'] / r['idle']:.2f} | "
                     f"{r['idle'] / base:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--busy-lead", type=float, default=1.0,
                        help="seconds the busy process runs before a loaded measurement")
    parser.add_argument("--policies", nargs="+", choices=list(POLICIES), default=list(POLICIES))
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check it runs")
    parser.add_argument("--worker", choices=list(POLICIES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.batch, args.size, args.steps, args.warmup, args.busy_lead = 2, 32, 1, 0, 0.2
    if args.worker:
        threads = apply_policy(args.worker)
        times = step_times(args.batch, args.size, args.steps, args.warmup)
        print(json.dumps({"median": statistics.median(times), "threads": threads}))
        return
    rows = measure(args.policies, args)
    print(f"conformer_tiny, batch {args.batch} of {args.size}x{args.size}, median of "
          f"{args.steps} steps; loaded = one busy process beside it"
          + (" (SMOKE: numbers mean nothing)" if args.smoke else ""))
    print(table(rows))


if __name__ == "__main__":
    main()
