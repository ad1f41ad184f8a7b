#!/usr/bin/env bash
# Issue 4: one short GPU session, end to end. On a GPU box with torch + transformers and this checkout
# (the corpus carried in the git-ignored .device/data/), it
#   1. prepares the full corpus                                  -> $WORK/data
#   2. times a plain-transformers baseline (base, fixed 64, bf16, eager) against duilian's trainer
#      (bucketed, bf16, compiled, fused AdamW) for base and the candidate, in one process
#                                                                -> throughput.json (real tokens/s, MFU)
#   3. trains `base` for BASE_MINUTES (steps sized from step 2; --max-minutes stops it cleanly)
#   4. trains the shippable candidate (CANDIDATE, default small) for CAND_MINUTES
#   5. evaluates the candidate on the test split (if `duilian evaluate` works here)
#   6. exports the candidate as fp16 safetensors in 15 MB shards into $OUT, plus results.tar.gz
#      (configs, vocab, metrics, loss curves, eval report, logs): few files, none over 16 MiB.
#
# Stage the data first, on the machine that has it (a no-op when already there):
#   mkdir -p .device/data && cp -r ../shared/data/couplet/train ../shared/data/couplet/test .device/data/
# then run with the device tool (carry .device/data):  bash scripts/device_run.sh
#
# Every knob is an environment variable; a CPU smoke test of the whole script:
#   DEVICE=cpu COMPILE=0 BASE_PRESET=tiny CANDIDATE=tiny BENCH_STEPS=4 BATCH=8 BASE_MINUTES=0.2 \
#   CAND_MINUTES=0.2 EVAL_LIMIT=8 CORPUS=tests/fixtures/couplets TEST=tests/fixtures/couplets OUT=/tmp/o \
#   bash scripts/device_run.sh
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-out/device}                     # what comes back (the device tool sets $OUT)
WORK=${WORK:-.device/work}                 # everything else (stays on the box)
CORPUS=${CORPUS:-.device/data/train}       # in.txt(.xz) + out.txt(.xz)
TEST=${TEST:-.device/data/test}            # the public test split, for evaluate
DEVICE=${DEVICE:-cuda}
COMPILE=${COMPILE:-1}                      # 1: --compile
BASE_PRESET=${BASE_PRESET:-base}
CANDIDATE=${CANDIDATE:-small}
BATCH=${BATCH:-64}                         # lines per step (the seed's 64 per GPU)
BENCH_STEPS=${BENCH_STEPS:-160}            # per throughput measurement; first half is warm-up
BASE_MINUTES=${BASE_MINUTES:-2}
CAND_MINUTES=${CAND_MINUTES:-3}
EVAL_LIMIT=${EVAL_LIMIT:-1000}             # test pairs to evaluate (3,830 in all)
PROCESSES=${PROCESSES:-8}                  # prepare workers

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DUILIAN=(python -c 'import sys; from duilian.cli import main; sys.exit(main())')  # `duilian`, uninstalled
mkdir -p "$OUT" "$WORK"
LOG="$WORK/device_run.log"
exec > >(tee -a "$LOG") 2>&1
say() { echo "== $(date -u +%H:%M:%S) $*"; }

say "environment"
python -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__,
"| cuda", torch.cuda.is_available() and torch.cuda.get_device_name())'
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true

say "1. prepare $CORPUS"
if [[ ! -f "$WORK/data/meta.json" ]]; then
  "${DUILIAN[@]}" prepare "$CORPUS" --out "$WORK/data" --processes "$PROCESSES"
fi

say "2. throughput: baseline vs duilian ($BASE_PRESET, $CANDIDATE)"
python scripts/device_bench.py --data "$WORK/data" --out "$WORK/bench" --presets "$BASE_PRESET" "$CANDIDATE" \
  --steps "$BENCH_STEPS" --batch-size "$BATCH" --device "$DEVICE" $([[ $COMPILE == 1 ]] || echo --no-compile)

# Steps that fit the budget at the measured speed, less OVERHEAD_S for compiling and evaluating, so the
# learning-rate schedule ends near 0 before --max-minutes (the hard stop) cuts in.
OVERHEAD_S=${OVERHEAD_S:-$([[ $COMPILE == 1 ]] && echo 60 || echo 10)}
steps_for() {  # preset minutes
  python - "$WORK/bench/throughput.json" "$1" "$2" "$OVERHEAD_S" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["runs"][f"duilian/{sys.argv[2]}"]
print(max(10, int(0.95 * (float(sys.argv[3]) * 60 - float(sys.argv[4])) * r["steps_per_s"])))
EOF
}
compile_flag() { [[ $COMPILE == 1 ]] && python - "$WORK/bench/throughput.json" "$1" <<'EOF' && echo --compile
import json, sys
sys.exit(0 if json.load(open(sys.argv[1]))["runs"][f"duilian/{sys.argv[2]}"]["compile"] else 1)
EOF
}

train_for() {  # preset minutes run_dir
  local steps; steps=$(steps_for "$1" "$2")
  say "train $1: $steps steps, at most $2 min -> $3"
  "${DUILIAN[@]}" train --data "$WORK/data" --out "$3" --preset "$1" --steps "$steps" --batch-size "$BATCH" \
    --pad batch --bucket --device "$DEVICE" $(compile_flag "$1") --max-minutes "$2" \
    --report-every $(( steps / 20 + 1 )) --eval-every $(( steps / 4 + 1 )) --save-every "$steps" --keep-checkpoints 1
}

say "3. base"
train_for "$BASE_PRESET" "$BASE_MINUTES" "$WORK/runs/base"
say "4. candidate"
train_for "$CANDIDATE" "$CAND_MINUTES" "$WORK/runs/candidate"

say "5. export + evaluate the candidate"
"${DUILIAN[@]}" export --checkpoint "$WORK/runs/candidate" --out "$WORK/model" --dtype float16 --max-shard-size 15MB
if [[ -f "$TEST/in.txt" ]]; then
  "${DUILIAN[@]}" evaluate --model "$WORK/model" --test "$TEST" --limit "$EVAL_LIMIT" --device "$DEVICE" \
    --batch-size 64 --quiet --out "$WORK/eval" || say "evaluate failed (kept going)"
fi

say "6. collect into $OUT"
cp "$WORK"/model/*.safetensors "$OUT"/
[[ -f "$WORK/model/model.safetensors.index.json" ]] && cp "$WORK/model/model.safetensors.index.json" "$OUT"/
mkdir -p "$WORK/results"
cp "$WORK/bench/throughput.json" "$WORK/results/"
for run in base candidate; do
  for f in metrics.jsonl loss.png config.json; do
    [[ -f "$WORK/runs/$run/$f" ]] && cp "$WORK/runs/$run/$f" "$WORK/results/$run.$f"
  done
done
[[ -d "$WORK/eval" ]] && cp -r "$WORK/eval" "$WORK/results/eval"
find "$WORK/model" -maxdepth 1 -type f ! -name '*.safetensors' ! -name '*.index.json' -exec cp {} "$WORK/results/" \;
cp "$LOG" "$WORK/results/"
tar -czf "$OUT/results.tar.gz" -C "$WORK" results
ls -la "$OUT"
say "done"
