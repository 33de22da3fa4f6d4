#!/bin/sh
# ds-pretrain --device cuda under mpirun -np 2, one GPU per rank with NCCL between them, follows one process on one
# GPU on the same global batch: losses and gradient norms within 1e-3 relative (each rank's GEMMs see half the rows,
# and the gradients add in another order); rank 0 alone logs and saves, and a run resumes on the other number of
# ranks. Skipped without mpirun, a build with MPI, CUDA and NCCL, or two visible GPUs.
set -eu
. "$(dirname "$0")/mpi.inc"
if ! grep -q '^DS_CUDA:BOOL=ON' "$DS_BIN/CMakeCache.txt" || ! grep -q '^DS_NCCL:BOOL=ON' "$DS_BIN/CMakeCache.txt"; then
  echo "built without CUDA or NCCL: skipped"
  exit 77
fi
if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
  gpus=$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c . || true)
else
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
[ "$gpus" -ge 2 ] || { echo "fewer than 2 GPUs visible: skipped"; exit 77; }
BIN=$DS_BIN/ds-pretrain
COMMON="--model-config tiny --seq-len 32 --batch 4 --log-every 1 --lr 1e-3 --device cuda"
field() { sed "s/.*\"$2\":\([-0-9.e+]*\).*/\1/" "$1/metrics.jsonl"; }
same() {
  for f in main_loss grad_norm; do
    field "$1" $f >"$T/a"
    field "$2" $f >"$T/b"
    paste "$T/a" "$T/b" | awk -v what="$3 $f" '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-3 * $1) bad = 1; n++ }
      END { if (bad || n == 0) { print what ": differs from one GPU"; exit 1 } }'
  done
}

$BIN "$T/one" $COMMON --steps 6 2>"$T/one.log" || fail "1 GPU: $(cat "$T/one.log")"
$MPIRUN -np 2 "$BIN" "$T/two" $COMMON --steps 6 2>"$T/two.log" || fail "2 ranks: $(cat "$T/two.log")"
grep -q "data parallel over 2 ranks (nccl), 2 sequences each" "$T/two.log" || fail "no NCCL data-parallel line"
grep -q "training on cuda:0" "$T/two.log" || fail "rank 0 is not on cuda:0"
[ "$(grep -c '^step ' "$T/two.log")" = 6 ] || fail "expected one log line per step from rank 0 only"
same "$T/one" "$T/two" "2 ranks"
[ "$(ls "$T/two/checkpoints")" = step-00000006 ] || fail "expected exactly one checkpoint"

# The 2-rank run resumes on one GPU and the 1-GPU run on 2 ranks; both continue to step 9 alike.
$BIN --resume "$T/two" $COMMON --steps 9 2>"$T/r1.log" || fail "resume on 1: $(cat "$T/r1.log")"
$MPIRUN -np 2 "$BIN" --resume "$T/one" $COMMON --steps 9 2>"$T/r2.log" || fail "resume on 2: $(cat "$T/r2.log")"
same "$T/one" "$T/two" "resumed"

# Expert parallelism stays on the CPU.
if $MPIRUN -np 2 "$BIN" "$T/ep" $COMMON --steps 2 --ep 2 2>"$T/ep.log"; then fail "--ep 2 on GPUs ran"; fi
grep -q "expert parallelism" "$T/ep.log" || fail "unclear --ep error: $(cat "$T/ep.log")"
exit 0
