"""Exact resumption of training: `python train.py` killed with SIGKILL at random moments (some of them
while a checkpoint is being written), resumed each time with --resume, then compared with an
uninterrupted run; and the same for Ctrl-C (SIGINT, sent between two checkpoints).

    nice .venv/bin/python -m bench.reliability.kill_resume [--kills 5] [--seed 2026]

CPU, one thread, a tiny model (24 steps, evaluation and checkpoint every 2). A kill comes either
"during a save" (as soon as a checkpoint's temporary file exists) or "at random": once the run has
written its first checkpoint, after a delay drawn uniformly from 0 to twice the time between two
checkpoints, so that it lands anywhere in a step, an evaluation or a write. Prints one JSON object:
per kill the moment, the exit status, the step of last.pt right after the kill and whether the
kill left a half-written temporary file; then whether the final run equals the uninterrupted one
(every tensor of last.pt and best.pt, the optimizer and random state, the metrics log).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FLAGS = ["--steps", "24", "--eval-every", "2", "--train-images", "40", "--val-images", "8", "--batch-size", "8",
         "--image-size", "32", "--encoder-dim", "32", "--hidden-dim", "32", "--embed-dim", "16", "--attention-dim", "16",
         "--no-progress", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def launch(out, *extra):
    return subprocess.Popen([sys.executable, "train.py", *FLAGS, "--out-dir", str(out), *extra], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, proc) -> bool:
    while not condition():
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return True


def saving(out: Path) -> bool:
    return any(out.glob(".*.pt.*.tmp"))




def compare(a: Path, b: Path) -> dict:
    from captioner.checkpoint import read_checkpoint
    from tests.state_equality import same

    def records(out):
        return [{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
                for line in (out / "metrics.jsonl").read_text().splitlines()]

    result = {"metrics_equal": records(a) == records(b), "metrics_steps": [r["step"] for r in records(b)]}
    for name in ("last.pt", "best.pt"):
        x, y = read_checkpoint(a / name)["state_dict"], read_checkpoint(b / name)["state_dict"]
        result[f"{name}_tensors"] = len(x)
        result[f"{name}_tensors_equal"] = sum(same(x[k], y.get(k)) for k in x)
    x, y = read_checkpoint(a / "last.pt")["train_state"], read_checkpoint(b / "last.pt")["train_state"]
    result["optimizer_and_rng_equal"] = same(x["optimizer"], y["optimizer"]) and same(x["rng"], y["rng"])
    result["temporary_files_left"] = len(list(b.glob(".*.tmp")))
    return result


def main() -> None:
    from captioner.checkpoint import CheckpointError, read_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        reference = tmp / "reference"
        proc = launch(reference)
        start = time.monotonic()
        wait_for(lambda: (reference / "config.json").exists(), proc)
        startup = time.monotonic() - start
        proc.communicate()
        loop = time.monotonic() - start - startup
        assert proc.returncode == 0
        elapsed = [json.loads(line)["elapsed_s"] for line in (reference / "metrics.jsonl").read_text().splitlines()]
        between_saves = max(0.05, (elapsed[-1] - elapsed[0]) / max(1, len(elapsed) - 1))

        out, kills = tmp / "killed", []
        moments = ["during a save"] * (args.kills // 2) + ["at random"] * (args.kills - args.kills // 2)
        rng.shuffle(moments)
        for moment in moments:
            (out / "config.json").unlink(missing_ok=True)
            proc = launch(out, "--resume")
            delay = None
            if wait_for(lambda: (out / "config.json").exists(), proc):
                if moment == "during a save":
                    wait_for(lambda: saving(out), proc)
                else:
                    first = (out / "last.pt").stat().st_ino if (out / "last.pt").exists() else None
                    wait_for(lambda: (out / "last.pt").exists() and (out / "last.pt").stat().st_ino != first, proc)
                    delay = rng.uniform(0.0, 2 * between_saves)
                    time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
            proc.communicate()
            torn = saving(out)
            try:
                step = read_checkpoint(out / "last.pt")["train_state"]["step"] if (out / "last.pt").exists() else None
                corrupt = False
            except CheckpointError:
                step, corrupt = None, True
            kills.append({"moment": moment, "delay_s": None if delay is None else round(delay, 2),
                          "exit_status": proc.returncode, "last_pt_step_after": step, "last_pt_corrupt": corrupt,
                          "half_written_temporary_left": torn})
        final = launch(out, "--resume")
        _, stderr = final.communicate()

        interrupted = tmp / "interrupted"
        proc = launch(interrupted)
        wait_for(lambda: (interrupted / "metrics.jsonl").exists() and (interrupted / "metrics.jsonl").read_text(), proc)
        time.sleep(rng.uniform(0.2, 1.0) * between_saves)  # somewhere between two checkpoints
        proc.send_signal(signal.SIGINT)
        stdout_int, stderr_int = proc.communicate()
        int_step = read_checkpoint(interrupted / "last.pt")["train_state"]["step"]
        resumed = launch(interrupted, "--resume")
        resumed.communicate()

        report = {
            "machine": "2-core CPU, no GPU, 1 torch thread",
            "run": "train.py " + " ".join(FLAGS),
            "reference": {"startup_s": round(startup, 1), "training_loop_s": round(loop, 1),
                          "between_checkpoints_s": round(between_saves, 2)},
            "kill_9": {"kills": kills, "final_exit_status": final.returncode,
                       "tracebacks": stderr.count("Traceback"), **compare(reference, out)},
            "ctrl_c": {"exit_status": proc.returncode, "saved_step": int_step,
                       "tracebacks": stderr_int.count("Traceback"), "resumed_exit_status": resumed.returncode,
                       **compare(reference, interrupted)},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
