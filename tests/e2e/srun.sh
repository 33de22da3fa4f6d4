#!/bin/sh
# Launched by Slurm's srun (--mpi=pmix), ds-pretrain and ds-grpo train data parallel as under mpirun: 2 tasks follow
# one process on the same global batch (losses within 1e-4 relative), with --ep 2 too, and a killed task ends the
# step instead of leaving the other waiting. Skipped (77) where no Slurm cluster answers, or without an MPI build.
set -eu
command -v srun >/dev/null 2>&1 && timeout 10 sinfo -h >/dev/null 2>&1 || { echo "no Slurm cluster: skipped"; exit 77; }
grep -q '^DS_MPI:BOOL=ON' "${DS_BIN:?}/CMakeCache.txt" || { echo "built without MPI: skipped"; exit 77; }
SRUN="timeout 300 srun -n 2 --mpi=pmix --export=ALL,OMP_NUM_THREADS=1"
. "$(dirname "$0")/scratch.inc"
cd "$T"  # Slurm starts the tasks in the submitting directory
losses() { sed "s/.*\"$2\":\([-0-9.e]*\).*/\1/" "$1/metrics.jsonl"; }
same() {  # run directories $1 and $2 logged the same values of metric $3
  losses "$1" "$3" >l1
  losses "$2" "$3" >l2
  paste l1 l2 | awk -v what="$4" '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-4 * ($1 < 0 ? -$1 : $1)) bad = 1; n++ }
    END { if (bad || n == 0) { print what ": differs from one process"; exit 1 } }'
}

COMMON="--model-config tiny --seq-len 32 --log-every 1 --threads 1 --batch 4 --steps 4"
"$DS_BIN/ds-pretrain" one $COMMON 2>one.log || fail "1 process: $(cat one.log)"
$SRUN "$DS_BIN/ds-pretrain" two $COMMON 2>two.log || fail "srun: $(cat two.log)"
grep -q "data parallel over 2 ranks (mpi), 2 sequences each" two.log || fail "no data-parallel line: $(cat two.log)"
same one two main_loss "srun ds-pretrain"
$SRUN "$DS_BIN/ds-pretrain" ep $COMMON --ep 2 2>ep.log || fail "srun --ep 2: $(cat ep.log)"
same one ep main_loss "srun ds-pretrain --ep 2"

GRPO="--model one --template plain --steps 2 --prompts-per-step 4 --group-size 4 --max-new-tokens 16 --threads 1"
"$DS_BIN/ds-grpo" g1 $GRPO 2>g1.log || fail "1 process: $(cat g1.log)"
$SRUN "$DS_BIN/ds-grpo" g2 $GRPO 2>g2.log || fail "srun ds-grpo: $(cat g2.log)"
same g1 g2 reward_mean "srun ds-grpo"

# Task 1 killed mid-run: the step ends (Slurm cancels it, or the collectives time out) with a failure, not a hang.
$SRUN "$DS_BIN/ds-pretrain" k --model-config tiny --seq-len 32 --threads 1 --batch 4 --steps 1000000 \
  --comm-timeout 20 >k.log 2>&1 &
launcher=$!
for _ in $(seq 100); do
  [ -d k/checkpoints ] || [ "$(pgrep -f "ds-pretrain k " | wc -l)" -ge 2 ] && break
  sleep 0.2
done
sleep 2
pgrep -f "ds-pretrain k " | tail -n 1 | xargs -r kill -9
status=0
wait $launcher || status=$?
[ $status -ne 0 ] || fail "the step with a killed task succeeded"
[ $status -ne 124 ] || fail "the step with a killed task hung until the timeout"
echo "srun: data parallel and expert parallel equal one process; a killed task ends the step"
