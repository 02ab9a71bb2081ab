#!/bin/bash
# One training stage of both bundled models side by side on one GPU, from their releases
# (maintainers only; docs/training.md). Needs python3 with torch, numpy, pillow, safetensors
# and tqdm; the repository need not be installed.
#
# Usage, in the repository root:
#   OUT=DIR DATA=DATA_ROOT bash scripts/gpu_stage.sh BUDGET_S [BATCH] [LR]
# BUDGET_S: seconds for all of it (probe, training, last validation, copying). A short probe
# of both runs measures images/s, so that the cosine schedule of the main runs is sized to end
# inside the budget; training.time_limit and `timeout` are only guards. Each run's
# checkpoint.pt, log.jsonl and config.toml land in OUT/color and OUT/grey, to be released here
# with scripts/release_models.py (a stage started from another GPU stage: --continues).
# INIT_DIR=DIR starts from DIR/color/model.safetensors and DIR/grey/model.safetensors instead
# of the releases; FORK_DIR=DIR carries on the runs in DIR/color and DIR/grey themselves (their
# checkpoint.pt, log.jsonl and config.toml: `fdn train --fork` at this batch, the runs' own
# rate and schedule, so LR is unused); RUNS (default /tmp/runs) is where the runs train.
#
# One schedule across calls: a call is at most ten minutes, and the machine stays warm (its
# /tmp kept) for a short while after each. TOTAL_S=SECONDS sizes the cosine schedule for that
# much training over all the calls, so the first call stops at its own budget with the runs
# mid-schedule (a checkpoint, as any time limit leaves); a next call on the still-warm machine
# with RESUME=1 continues both runs from RUNS exactly (`fdn train --resume`, its Adam state
# and schedule kept) for its BUDGET_S, and OUT gets the runs as they are then. Released once,
# at the end, like any stage. A fresh stage in each call would restart the warm-up and Adam.
#
# COMPILE (default off) is every run's training.compile: cudagraphs (inductor and CUDA graphs)
# for a step bound by the host's kernel launches, as the bundled models' is on a GPU. A fork
# that fails compiled before its first checkpoint runs again eager for the time left.
set -u
BUDGET=${1:-480}
BATCH=${2:-128}
LR=${3:-4e-4}
T0=$(date +%s)
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-5}
R=${RUNS:-/tmp/runs}
RESUME=${RESUME:-0}
[ "$RESUME" = 1 ] || rm -rf "$R"
mkdir -p "$R" "$OUT"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
PRECISION=bf16
COMPILE=${COMPILE:-off}
init() { if [ -n "${INIT_DIR:-}" ]; then echo $INIT_DIR/$1/model.safetensors; else echo fdn-$1-blind; fi; }

common() {
  echo --set data.root=${DATA:-$PWD/gpu/data} --set training.device=$DEVICE --set data.workers=$WORKERS \
    --set training.threads=2 --set training.batch_size=$BATCH --set optim.lr=$LR \
    --set optim.warmup=300 --set training.precision=$PRECISION --set training.compile=$COMPILE \
    --no-progress
}

probe() {  # name steps
  $PY -m fdn train configs/bundled_$1_blind.toml --init $(init $1) --out $R/probe-$1 \
    $(common) --set training.iterations=$2 --set training.log_every=20 \
    --set validation.every=100000 > $R/probe-$1.out 2>&1
}

rate() {  # images/s of the last logged window of a run
  $PY -c "import json,sys; rows=[json.loads(l) for l in open(sys.argv[1])]; \
print(min(r['images_per_s'] for r in rows[-2:] if 'images_per_s' in r))" $R/$1/log.jsonl 2>/dev/null
}

NAMES=${NAMES:-color grey}
bring_back() {  # each run's checkpoint, log and config to OUT, to be released here
  for name in $NAMES; do
    mkdir -p $OUT/$name
    cp $R/$name/checkpoint.pt $R/$name/log.jsonl $R/$name/config.toml $OUT/$name/ 2>/dev/null
    tail -n 6 $R/$name.out
  done
  if [ -n "${GROW:-}" ]; then  # the grown network's checkpoint (Adam's moments) is too big
    mkdir -p $OUT/$GROW-paper   # for the device's files back: its weights, log and config
    cp $R/$GROW-paper/model.safetensors $R/$GROW-paper/log.jsonl $R/$GROW-paper/config.toml \
      $OUT/$GROW-paper/ 2>/dev/null
    tail -n 6 $R/$GROW-paper.out
  fi
  echo "total $(( $(date +%s) - T0 )) s"
}

limit_after() {  # the time limit (minutes) for the run in folder $1 to train $LEFT s more
  $PY -c "import sys, torch; c = torch.load(sys.argv[1], weights_only=True); \
print(round((int(c['train_seconds']['wall']) + $LEFT + 10) / 60, 2))" $1/checkpoint.pt
}

paper_probe() {  # the paper's network's images/s here, in PAPER_PROBE_S seconds kept for it
  [ "${PAPER_PROBE_S:-0}" -gt 0 ] || return 0
  local limit=$($PY -c "print(round(max(${PAPER_PROBE_S} - 30, 5) / 60, 2))")
  # Validated on held-back training images: the config's test/CBSD68 is not carried here.
  timeout --foreground -k 10 -s TERM $(( PAPER_PROBE_S + 30 )) $PY -m fdn train \
    ${PAPER_CONFIG:-configs/natural_color_blind.toml} --out $R/paper \
    --set data.root=${DATA:-$PWD/gpu/data} --set validation.folder= --set data.holdout=32 \
    --set training.device=$DEVICE --set data.workers=$WORKERS --set training.batch_size=$BATCH \
    --set training.precision=$PRECISION --set training.time_limit=$limit \
    --set training.compile=$COMPILE --set training.log_every=10 --set validation.every=100000 \
    --no-progress > $R/paper.out 2>&1
  echo "paper network (${PAPER_CONFIG:-configs/natural_color_blind.toml}, batch $BATCH, $PRECISION):" \
    "$(rate paper) images/s, $(tail -n 1 $R/paper/log.jsonl | $PY -c \
    "import json,sys; print(json.loads(sys.stdin.read())['step'])") steps"
}

if [ "$RESUME" = 1 ]; then
  # Seconds for training in this call: start-up, the last validation and the copy aside, and
  # PAPER_PROBE_S for a probe of the paper's network after the runs (issue #20, point 7: how
  # fast the spec's network trains on this GPU; 0, the default, skips it).
  LEFT=$(( BUDGET - 45 - ${PAPER_PROBE_S:-0} ))
  resume() {  # name: on to the end of its schedule, or of this call's budget
    [ -f $R/$1/checkpoint.pt ] || { echo "$1: no run in $R to resume (a cold machine?)"; return 1; }
    local limit=$(limit_after $R/$1)
    timeout --foreground -k 30 -s TERM $(( LEFT + 90 )) $PY -m fdn train --resume $R/$1 \
      --set training.time_limit=$limit --set data.root=${DATA:-$PWD/gpu/data} \
      --set training.device=$DEVICE --set data.workers=$WORKERS --set training.compile=$COMPILE \
      --no-progress >> $R/$1.out 2>&1
    echo "$1 exit $?"
  }
  echo "resuming both runs for $LEFT s"
  resume color & resume grey & wait
  bring_back
  paper_probe
  exit 0
fi

if [ -n "${FORK_DIR:-}" ]; then
  # The CPU runs themselves, carried on here: FORK_DIR/color and FORK_DIR/grey hold each run's
  # checkpoint.pt, log.jsonl and config.toml, and `fdn train --fork` keeps its weights, Adam
  # state, moving average, step and schedule, at this batch, so a lending is a stretch of the
  # runs, not a stage of its own (no new warm-up or Adam, nothing to size), and the CPU can
  # carry on from what comes back (a fork again, at the CPU's batch).
  LEFT=$(( BUDGET - 45 ))
  # NAMES (default "color grey") picks the runs. GROW=NAME adds, beside them, NAME's run grown
  # into the paper's network (FDN's defaults: 8 Steps of Flow per block, width 32; the fork
  # keeps what the run has learnt, the new layers starting as the identity) and validated
  # every GROW_VAL_EVERY steps: issue #20, point 7, the paper's network on a GPU, its rate
  # and PSNR curve, from the CPU run rather than from scratch.
  # The device's carry limit (64 MiB with the working tree) fits both checkpoints beside the
  # data only compressed: `xz -9 -k checkpoint.pt` here, unpacked on the device, once per run
  # before any fork reads it (GROW forks a run twice at once). A CPU run's precision was
  # resolved there (fp32 on a CPU without bfloat16 arithmetic); here it trains in $PRECISION.
  for name in $NAMES ${GROW:-}; do
    [ -f $FORK_DIR/$name/checkpoint.pt.xz ] && xz -d -f $FORK_DIR/$name/checkpoint.pt.xz
  done
  fork_as() {  # compile seconds name out [--set ...]: the run in FORK_DIR/name carried on
    local compile=$1 seconds=$2 name=$3 out=$4
    local limit=$(LEFT=$seconds limit_after $FORK_DIR/$name)
    shift 4
    timeout --foreground -k 30 -s TERM $(( seconds + 90 )) $PY -m fdn train \
      --fork $FORK_DIR/$name --out $R/$out --set data.root=${DATA:-$PWD/gpu/data} \
      --set training.device=$DEVICE --set data.workers=$WORKERS --set training.threads=2 \
      --set training.batch_size=$BATCH --set training.time_limit=$limit \
      --set training.precision=$PRECISION --set training.compile=$compile "$@" \
      --no-progress >> $R/$out.out 2>&1
  }
  fork() {  # name out [--set ...]: into R/out, compiled as COMPILE says, else eager
    fork_as $COMPILE $LEFT "$@"
    local code=$?
    local left=$(( BUDGET - 45 - ($(date +%s) - T0) ))
    # Only a fork that failed before its first checkpoint (in compiling, most likely).
    if [ $code != 0 ] && [ "$COMPILE" != off ] && [ ! -f $R/$2/checkpoint.pt ] \
      && [ $left -gt 60 ]; then
      echo "$2: failed with training.compile=$COMPILE (exit $code), again eager for $left s:"
      tail -n 5 $R/$2.out
      rm -rf $R/$2
      fork_as off $left "$@"
      code=$?
    fi
    echo "$2 exit $code"
  }
  echo "forking $NAMES ${GROW:+and $GROW grown to the paper network }for $LEFT s at batch $BATCH"
  for name in $NAMES; do fork $name $name & done
  if [ -n "${GROW:-}" ]; then
    # The paper's network is FDN's defaults (fdn.model.FDNConfig), read rather than restated.
    paper=$($PY -c "from fdn.model import FDNConfig as C; print(C.steps_per_block, C.hidden_channels)")
    fork $GROW $GROW-paper --set model.steps_per_block=${paper% *} \
      --set model.hidden_channels=${paper#* } --set validation.every=${GROW_VAL_EVERY:-100} \
      --set training.log_every=10 &
  fi
  wait
  bring_back
  exit 0
fi

PROBE_STEPS=${PROBE_STEPS:-100}
probe color $PROBE_STEPS & probe grey $PROBE_STEPS & wait
if [ -z "$(rate probe-color)" ] || [ -z "$(rate probe-grey)" ]; then
  echo "probe failed in bf16:"; tail -n 15 $R/probe-color.out $R/probe-grey.out
  PRECISION=fp32
  rm -rf $R/probe-*
  probe color $PROBE_STEPS & probe grey $PROBE_STEPS & wait
fi
RC=$(rate probe-color); RG=$(rate probe-grey)
echo "probe ($PRECISION, batch $BATCH): colour $RC images/s, grey $RG images/s"
[ -z "$RC" ] && { tail -n 30 $R/probe-color.out; exit 1; }
[ -z "$RG" ] && { tail -n 30 $R/probe-grey.out; exit 1; }

# Seconds left for the main runs: start-up (~20 s), the last validation and the copy (~25 s).
LEFT=$(( BUDGET - ($(date +%s) - T0) - 45 ))
# The schedule's length: this call's training time, or TOTAL_S over all calls (see above).
PLANNED=$(( ${TOTAL_S:-0} > 0 ? TOTAL_S - (BUDGET - LEFT) : LEFT ))
iters() { $PY -c "import sys; print(max(300, int(float(sys.argv[1]) * $PLANNED / $BATCH * 0.9)))" $1; }
NC=$(iters $RC); NG=$(iters $RG)
LIMIT=$($PY -c "print(round(($LEFT + 10) / 60, 2))")
echo "main runs: colour $NC its, grey $NG its, time limit $LIMIT min ($LEFT s left)"

main() {  # name iterations
  timeout --foreground -k 30 -s TERM $(( LEFT + 90 )) $PY -m fdn train configs/bundled_$1_blind.toml \
    --init $(init $1) --out $R/$1 $(common) --set training.iterations=$2 \
    --set training.time_limit=$LIMIT --set validation.every=1000 \
    --set training.checkpoint_every=500 > $R/$1.out 2>&1
  echo "$1 exit $?"
}
main color $NC & main grey $NG & wait
bring_back
