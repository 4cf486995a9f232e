#!/usr/bin/env bash
# The Table 6 runs of docs/results.md (issue 25): two single-threaded, nice-19 workers share one
# ordered list of `cifar-paper` runs. Each worker takes the first run that is neither finished
# (model.safetensors present) nor held by the other worker (flock on RUNS/.claim-<run>, released
# when the worker's run ends or dies), so both cores stay busy until the list is done. A run with a
# checkpoint resumes. Required runs first, then the optional 56-layer seeds.
#
#   CODE=<a checkout, frozen for the runs> PY=<its python> DATA=<cifar10-jpeg-train.tar.gz> \
#   RUNS=~/resnets-runs/paper/runs nohup docs/results/table6_runs.sh >/dev/null 2>&1 &
#
# WORKERS x THREADS (default 2 x 1) splits the cores. Two 1-thread runs train ~20% more images/s
# in all than one 2-thread run (ResNet-110, bf16 + fused BN/ReLU, idle machine: 96 images/s at 1
# thread, 158 at 2; benchmarks/bench_train_cifar.py), but WORKERS=1 THREADS=2 finishes each run
# in ~60% of the wall time, so fewer session ends and machine changes pass over a long run
# (run directories live outside the repository and are lost with the machine).
#
# Stop it at the end of a session with `pkill -f table6_runs.sh; pkill -TERM -f "resnets train"`:
# SIGTERM makes each run write a checkpoint at the iteration it is in.
set -u
CODE=${CODE:?set CODE to the checkout the runs use}
PY=${PY:-python}
DATA=${DATA:?set DATA to cifar10-jpeg-train.tar.gz}
RUNS=${RUNS:-$HOME/resnets-runs/paper/runs}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-1}
LIST="cifar_resnet110:0 cifar_resnet32:0 cifar_resnet44:0 cifar_resnet20:1 cifar_plain20:1
      cifar_resnet20:2 cifar_plain20:2 cifar_resnet56:1 cifar_plain56:1 cifar_resnet56:2 cifar_plain56:2"
train_one() {  # model seed (called under the run's claim)
  local dir=$RUNS/$1-s$2
  [ -f "$dir/model.safetensors" ] && return 0
  local resume=""; [ -f "$dir/checkpoints/last.pt" ] && resume="--resume"
  ( cd "$CODE" && PYTHONPATH=$CODE OMP_NUM_THREADS=$THREADS nice -n 19 $PY -m resnets train \
      --model $1 --seed $2 --data $DATA --out $dir --eval-every 1000 --log-every 100 \
      --checkpoint-every 500 --no-tensorboard $resume ) >>"$RUNS/$1-s$2.log" 2>&1
}
worker() {
  local item model seed
  for item in $LIST; do
    model=${item%:*}; seed=${item#*:}
    [ -f "$RUNS/$model-s$seed/model.safetensors" ] && continue
    (
      flock -n 9 || exit 0          # the other worker has it
      train_one "$model" "$seed"
    ) 9>"$RUNS/.claim-$model-s$seed"
  done
}
mkdir -p "$RUNS"
for ((i = 0; i < WORKERS; i++)); do worker & sleep 5; done
wait
