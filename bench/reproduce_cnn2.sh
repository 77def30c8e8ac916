#!/usr/bin/env bash
# Reproduce document 003: cnn2, Adam 1e-3, batch 128, 20 epochs, 45k/5k split, no augmentation,
# on the CPU. Prints best validation / test accuracy, wall time and peak RSS (/usr/bin/time -v)
# and writes them to BENCHMARKS.md. Extra arguments go to `sweeper train` (e.g. --threads 2).
#
#   bench/reproduce_cnn2.sh            # SWEEPER_DATA_DIR defaults to ../shared/datasets
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${SWEEPER_DATA_DIR:-$(cd .. && pwd)/shared/datasets}
command=(.venv/bin/sweeper train --model cnn2 --optimizer adam --lr 0.001 --weight-decay 0
  --batch-size 128 --epochs 20 --val-size 5000 --no-augment --dataset cifar10
  --data-dir "$data_dir" --device cpu --json "$@")

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "running: ${command[*]}" >&2
load_before=$(cut -d' ' -f1 /proc/loadavg)
started=$(date +%s.%N)
/usr/bin/time -v -o "$tmp/time" "${command[@]}" >"$tmp/out"
finished=$(date +%s.%N)
load_after=$(cut -d' ' -f1 /proc/loadavg)

.venv/bin/python - "$tmp/out" "$tmp/time" "$started" "$finished" "${command[*]}" \
  "$load_before" "$load_after" <<'EOF'
import datetime, json, os, sys  # noqa: E401
from pathlib import Path

sys.path.insert(0, "bench")
from pipeline import BENCHMARKS, machine, write_section  # noqa: E402

out, timing, started, finished, command, load_before, load_after = sys.argv[1:]
result = json.loads(Path(out).read_text().strip().splitlines()[-1])
rss_kb = next(
    int(line.split(":")[1]) for line in Path(timing).read_text().splitlines()
    if "Maximum resident set size" in line
)
val, test, wall = result["best_val_acc"], result["test_acc"], float(finished) - float(started)
rss_gb = rss_kb / 1024**2
ok = val >= 0.66 and rss_gb < 2
print(f"best validation accuracy: {val:.4f} (epoch {result['best_epoch']})")
print(f"test accuracy:            {test:.4f}")
print(f"wall time:                {wall:.0f} s (training {result['seconds']:.0f} s)")
print(f"peak RSS:                 {rss_gb:.2f} GB")
print("targets (val >= 66%, peak RSS < 2 GB):", "met" if ok else "MISSED")

images_per_s = sum(h["images_per_s"] for h in result["history"]) / len(result["history"])
body = f"""\
{datetime.date.today()}, {machine()}, torch threads: {result["config"]["threads"] or "default"}.

| | this run | target | document 003 |
|---|---|---|---|
| best validation accuracy | {val:.2%} (epoch {result["best_epoch"]}) | >= 66% | 66.57% |
| test accuracy | {test:.2%} | | 72.95% |
| wall time (whole command) | {wall:.0f} s | | |
| training throughput (mean of epochs) | {images_per_s:.0f} img/s | | |
| peak RSS | {rss_gb:.2f} GB | < 2 GB | |

Targets {"met" if ok else "MISSED"}. Data: the JPEG re-encoded CIFAR-10 copy
(`cifar10-jpeg.tar.gz`), which runs slightly below published CIFAR-10 figures.
Peak RSS from `/usr/bin/time -v`; split hash {result["split_hash"]}. 1-minute load average
{load_before} before, {load_after} after (above the core count, other processes slowed the run).

Command: `bench/reproduce_cnn2.sh`, which runs `{command.replace(os.getcwd() + "/", "")}`
"""
heading = (
    "## Reproduction: document 003 (cnn2, Adam 1e-3, batch 128, 20 epochs, 45k/5k, "
    "no augmentation)"
)
write_section(BENCHMARKS, heading, body)
print(f"wrote '{heading}' to {BENCHMARKS}")
sys.exit(0 if ok else 1)
EOF
