"""What the trainer's warm-up and pinned batches are worth, measured on this machine's first
GPU (on the CPU where there is none, to try the script):

  first epoch   the first timed epoch of a fresh process, without the warm-up step (the CUDA
                context, cuDNN's choice of algorithms and lazily loaded kernels land in it)
                and with it (common.Trainer.warm_up first, timed apart), each in a process
                of its own; and a second epoch for comparison;
  copy          one batch to the device, from pageable and from pinned memory, with
                non_blocking=True (only a pinned source lets the copy overlap the work).

    python benchmarks/gpu_warmup.py [--grid_size 256] [--num_sims 8] [--output FILE.json]

Prints the figures and the same-run ratios; writes them as JSON with --output.
"""
import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch  # noqa: E402

import common  # noqa: E402


def data(num_sims: int, grid_size: int) -> common.TrainingData:
    periods = common.wave_periods(num_sims)
    sims = [common.simulate(i, periods[i], grid_size, compute_time=0) for i in range(num_sims)]
    training = common.TrainingData([sim.report(io_s=0) for sim in sims], grid_size)
    for sim in sims:
        training.add(sim.index, sim.pairs)
    return training


def epochs(num_sims: int, grid_size: int, warm_up: bool) -> dict:
    """In this (fresh) process: optionally the warm-up, then two epochs."""
    inputs, outputs = data(num_sims, grid_size).tensors()
    device = common.pick_device()
    trainer = common.Trainer(inputs, outputs, kernel_size=3, device=device)
    warmup_s = trainer.warm_up() if warm_up else 0.0
    first, second = trainer.epoch()[2], trainer.epoch()[2]
    return {"device": str(device), "warmup_s": warmup_s, "first_epoch_s": first,
            "second_epoch_s": second}


def copies(grid_size: int, repeats: int = 50) -> dict:
    """Seconds per copy of one batch to the device, pageable and pinned (median of repeats)."""
    device = common.pick_device()
    batch = torch.rand(common.BATCH_SIZE, 1, grid_size, grid_size)
    found = {"device": str(device), "batch_bytes": batch.numel() * batch.element_size()}
    for name, source in (("pageable", batch),
                         ("pinned", batch.pin_memory() if device.type == "cuda" else batch)):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            source.to(device, non_blocking=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        found[f"{name}_s"] = sorted(times)[len(times) // 2]
    return found


def in_fresh_process(args, warm_up: bool) -> dict:
    out = subprocess.run([sys.executable, __file__, "--num_sims", str(args.num_sims),
                          "--grid_size", str(args.grid_size), "--one",
                          "warm" if warm_up else "cold"],
                         capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_sims", type=int, default=8)
    parser.add_argument("--grid_size", type=int, default=256)
    parser.add_argument("--output", help="JSON file for the figures")
    parser.add_argument("--one", choices=("cold", "warm"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:                # a child: one process's epochs, as JSON on the last line
        print(json.dumps(epochs(args.num_sims, args.grid_size, args.one == "warm")))
        return 0
    cold, warm = in_fresh_process(args, False), in_fresh_process(args, True)
    copy = copies(args.grid_size)
    figures = {"num_sims": args.num_sims, "grid_size": args.grid_size,
               "load_average": os.getloadavg(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
               "without_warm_up": cold, "with_warm_up": warm, "copy": copy}
    print(f"{args.num_sims} x {args.grid_size}^2 on {cold['device']} "
          f"({figures['gpu'] or 'no GPU'}), torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"  first epoch without warm-up : {cold['first_epoch_s']:.3f} s "
          f"(second {cold['second_epoch_s']:.3f} s, ratio first/second "
          f"{cold['first_epoch_s'] / cold['second_epoch_s']:.2f})")
    print(f"  first epoch after warm-up   : {warm['first_epoch_s']:.3f} s "
          f"(warm-up {warm['warmup_s']:.3f} s, apart; ratio first/second "
          f"{warm['first_epoch_s'] / warm['second_epoch_s']:.2f})")
    print(f"  one batch ({copy['batch_bytes']:,} bytes) to {copy['device']}: pageable "
          f"{copy['pageable_s'] * 1e6:.1f} us, pinned {copy['pinned_s'] * 1e6:.1f} us "
          f"(ratio {copy['pageable_s'] / copy['pinned_s']:.2f})")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(figures, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
