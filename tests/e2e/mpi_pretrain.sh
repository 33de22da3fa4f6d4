#!/bin/sh
# ds-pretrain under mpirun -np 2: data parallel follows one process on the same global batch (losses within 1e-4
# relative: ranks sum in another order), with and without --ep; gradient buckets change nothing; a run resumes on
# another number of ranks; bad splits are refused.
set -eu
. "$(dirname "$0")/mpi.inc"
BIN=$DS_BIN/ds-pretrain
COMMON="--model-config tiny --seq-len 32 --log-every 1 --threads 1 --lr 1e-3"
losses() { sed 's/.*"main_loss":\([-0-9.e]*\).*/\1/' "$1/metrics.jsonl"; }
same_losses() {
  losses "$1" >"$T/l1"
  losses "$2" >"$T/l2"
  paste "$T/l1" "$T/l2" | awk -v what="$3" '{ d = $1 - $2; if (d < 0) d = -d; if (d > 1e-4 * $1) bad = 1; n++ }
    END { if (bad || n == 0) { print what ": losses differ from one process"; exit 1 } }'
}

$BIN "$T/one" $COMMON --batch 4 --steps 6 2>"$T/one.log" || fail "1 process: $(cat "$T/one.log")"
$MPIRUN -np 2 "$BIN" "$T/two" $COMMON --batch 4 --steps 6 2>"$T/two.log" || fail "2 ranks: $(cat "$T/two.log")"
grep -q "data parallel over 2 ranks (mpi), 2 sequences each" "$T/two.log" || fail "no data-parallel line"
[ "$(grep -c '^step ' "$T/two.log")" = 6 ] || fail "expected one log line per step from rank 0 only"
same_losses "$T/one" "$T/two" "2 ranks"
grep -q '"comm_share"' "$T/two/metrics.jsonl" || fail "no comm_share in metrics"
[ "$(ls "$T/two/checkpoints")" = step-00000006 ] || fail "expected exactly one checkpoint"

$MPIRUN -np 2 "$BIN" "$T/ep" $COMMON --batch 4 --steps 6 --ep 2 2>"$T/ep.log" || fail "--ep 2: $(cat "$T/ep.log")"
grep -q "experts split over 2 ranks" "$T/ep.log" || fail "no expert-parallel line"
same_losses "$T/one" "$T/ep" "--ep 2"

# Gradients reduced in buckets during the backward (tiny's in several at --bucket-mb 0.02) give the weights and
# AdamW state of one reduction after it (--bucket-mb 0) bitwise: on 2 ranks each sum is one addition either way.
n=0
for extra in "" "--grad-accum 2" "--ep 2"; do
  n=$((n + 1))
  for mb in 0 0.02; do
    $MPIRUN -np 2 "$BIN" "$T/b$n-$mb" $COMMON --batch 4 --steps 4 $extra --bucket-mb $mb 2>"$T/b.log" ||
      fail "--bucket-mb $mb $extra: $(cat "$T/b.log")"
  done
  for f in model optimizer; do
    cmp -s "$T/b$n-0/checkpoints/step-00000004/$f.safetensors" "$T/b$n-0.02/checkpoints/step-00000004/$f.safetensors" ||
      fail "--bucket-mb 0.02 $extra: $f.safetensors differs from --bucket-mb 0"
  done
done

# Resume on another number of ranks: the 2-rank run on 1, the 1-rank run on 2; both continue to step 9 alike.
$BIN --resume "$T/two" $COMMON --batch 4 --steps 9 2>"$T/r1.log" || fail "resume on 1: $(cat "$T/r1.log")"
$MPIRUN -np 2 "$BIN" --resume "$T/one" $COMMON --batch 4 --steps 9 2>"$T/r2.log" || fail "resume on 2: $(cat "$T/r2.log")"
grep -q "resumed" "$T/r2.log" || fail "no resume line"
same_losses "$T/one" "$T/two" "resumed"
[ -d "$T/one/checkpoints/step-00000009" ] || fail "no step-9 checkpoint"

# A global batch that does not split over the ranks, or experts over --ep, is a clear error.
if $MPIRUN -np 2 "$BIN" "$T/bad" $COMMON --batch 3 --steps 2 2>"$T/bad.log"; then fail "--batch 3 on 2 ranks ran"; fi
grep -q "multiple of the 2 ranks" "$T/bad.log" || fail "unclear batch error: $(cat "$T/bad.log")"
if $MPIRUN -np 2 "$BIN" "$T/bad2" $COMMON --batch 4 --ep 3 --steps 2 2>"$T/bad2.log"; then fail "--ep 3 on 2 ranks ran"; fi
grep -q "must divide the number of ranks" "$T/bad2.log" || fail "unclear --ep error: $(cat "$T/bad2.log")"
