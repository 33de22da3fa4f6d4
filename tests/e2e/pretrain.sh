#!/bin/sh
# ds-pretrain end to end on the tiny model: loss falls, resume is bit-exact, signals save, bad input is refused.
set -eu
BIN=${DS_BIN:?}/ds-pretrain
. "$(dirname "$0")/scratch.inc"
COMMON="--model-config tiny --batch 4 --seq-len 32 --threads 2 --log-every 1"

# Loss falls: the mean of the last 5 logged losses is well below the first.
$BIN "$T/a" $COMMON --steps 40 --lr 3e-3 --warmup 2 2>"$T/a.log" || fail "training failed: $(cat "$T/a.log")"
awk -F'"main_loss":' '{ split($2, v, ","); loss[NR] = v[1] } END {
  last = (loss[NR] + loss[NR-1] + loss[NR-2] + loss[NR-3] + loss[NR-4]) / 5;
  if (!(last < loss[1] - 1.0)) { print "loss did not fall: " loss[1] " -> " last; exit 1 } }' "$T/a/metrics.jsonl"
[ -L "$T/a/latest" ] || fail "no latest link"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json optimizer.safetensors trainer_state.json; do
  [ -s "$T/a/latest/$f" ] || fail "checkpoint lacks $f"
done

# FP8 emulation trains too, to a loss near the full-precision run's.
$BIN "$T/f8" $COMMON --steps 40 --lr 3e-3 --warmup 2 --fp8 2>/dev/null || fail "--fp8 training failed"
last() { tail -1 "$1" | sed 's/.*"main_loss":\([0-9.]*\).*/\1/'; }
awk -v a="$(last "$T/a/metrics.jsonl")" -v f="$(last "$T/f8/metrics.jsonl")" 'BEGIN {
  if (!(f < a * 1.1 && f > a * 0.9)) { print "fp8 loss " f " vs full precision " a; exit 1 } }'

# Bit-exact resume: 12 steps straight == 6 steps, stop, resume to 12 (cosine schedule over 12 both times).
$BIN "$T/full" $COMMON --steps 12 2>/dev/null
$BIN "$T/split" $COMMON --steps 12 --stop-after 6 2>/dev/null
[ -d "$T/split/checkpoints/step-00000006" ] || fail "--stop-after did not save step 6"
$BIN --resume "$T/split" $COMMON --steps 12 2>/dev/null
cmp "$T/full/latest/model.safetensors" "$T/split/latest/model.safetensors" || fail "resumed weights differ"
cmp "$T/full/latest/optimizer.safetensors" "$T/split/latest/optimizer.safetensors" || fail "resumed optimizer differs"

# --steps is the run's total: a constant-lr run saved at 5 continues to 10 exactly as a 10-step run.
$BIN "$T/c10" $COMMON --schedule constant --steps 10 2>/dev/null
$BIN "$T/c5" $COMMON --schedule constant --steps 5 2>/dev/null
$BIN --resume "$T/c5" $COMMON --schedule constant --steps 10 2>/dev/null
cmp "$T/c10/latest/model.safetensors" "$T/c5/latest/model.safetensors" || fail "continued run differs"

# --keep 2 leaves the two newest checkpoints.
$BIN "$T/k" $COMMON --steps 6 --save-every 1 --keep 2 2>/dev/null
[ "$(ls "$T/k/checkpoints" | tr '\n' ' ')" = "step-00000005 step-00000006 " ] || fail "--keep: $(ls "$T/k/checkpoints")"

# SIGTERM saves a checkpoint and exits 0; the run resumes from it.
$BIN "$T/sig" $COMMON --steps 100000 2>/dev/null &
pid=$!
i=0
while [ ! -f "$T/sig/metrics.jsonl" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
sleep 0.5
kill -TERM $pid
wait $pid || fail "SIGTERM exit status $?"
[ -f "$T/sig/latest/trainer_state.json" ] || fail "no checkpoint after SIGTERM"
step=$(sed -n 's/.*"step": \([0-9]*\).*/\1/p' "$T/sig/latest/trainer_state.json")
$BIN --resume "$T/sig" $COMMON --steps $((step + 2)) 2>/dev/null || fail "resume after SIGTERM"

# Refusals: exit 1 with a one-line message naming the problem; exit 2 for usage errors; no partial run left.
set +e
$BIN "$T/a" $COMMON --steps 2 2>"$T/err"; [ $? -eq 1 ] && grep -q "already holds a run" "$T/err" || fail "overwrite"
$BIN --resume "$T/none" $COMMON 2>"$T/err"; [ $? -eq 1 ] || fail "resume of nothing"
echo '{"hidden_size": 8, "bogus_key": 1}' >"$T/bad.json"
$BIN "$T/b" --model-config "$T/bad.json" 2>"$T/err"; [ $? -eq 1 ] && grep -q "bad.json" "$T/err" || fail "bad config"
[ ! -e "$T/b/latest" ] || fail "a failed start left a checkpoint"
$BIN "$T/b" --model-config nosuch 2>"$T/err"; [ $? -eq 1 ] && grep -q "unknown model config" "$T/err" || fail "preset"
$BIN "$T/b" --batch x 2>/dev/null; [ $? -eq 2 ] || fail "bad option value is a usage error"
$BIN 2>/dev/null; [ $? -eq 2 ] || fail "missing run directory is a usage error"
$BIN "$T/b" --device cuda:99 2>/dev/null; [ $? -eq 2 ] || fail "unavailable device is a usage error"
printf 'abc' >"$T/odd.tok"
$BIN "$T/d" $COMMON --data "$T/odd.tok" 2>"$T/err"; [ $? -eq 1 ] && grep -q "odd.tok" "$T/err" || fail "bad shard"
set -e
# Out-of-range and non-finite values are usage errors with a short message naming the option; nothing is created.
refused 2 "--lr: nan is not a number > 0" $BIN "$T/r" --model-config tiny --steps 3 --lr nan
refused 2 "--lr: -1 is not a number > 0" $BIN "$T/r" --lr -1
refused 2 "--lr: inf" $BIN "$T/r" --lr inf
refused 2 "--warmup: -3 is not an integer >= 0" $BIN "$T/r" --warmup -3
refused 2 "--clip: -1" $BIN "$T/r" --clip -1
refused 2 "--beta2: 1.5 is not in [0, 1)" $BIN "$T/r" --beta2 1.5
refused 2 "--steps: -5 is not an integer >= 1" $BIN "$T/r" --steps -5
refused 2 "--steps: 2.5" $BIN "$T/r" --steps 2.5
refused 2 "--batch: 0" $BIN "$T/r" --batch 0
refused 2 "--schedule: unknown learning-rate schedule 'bogus'" $BIN "$T/r" --schedule bogus
refused 2 "--bad-lr-factor: 0 is not in (0, 1]" $BIN "$T/r" --bad-lr-factor 0
refused 2 "--comm-timeout: nan" $BIN "$T/r" --comm-timeout nan
refused 2 "--mtp-weight: -0.5" $BIN "$T/r" --mtp-weight -0.5
[ "$(wc -c <"$T/refused.err")" -lt 100 ] || fail "long message: $(cat "$T/refused.err")"
[ ! -e "$T/r" ] || fail "a refused option left a run directory"
# --config: an unknown key or a line that is not text is a usage error naming the file and line; values are checked.
printf '# options\nbatch = 2\nstpes = 3\n' >"$T/typo.toml"
refused 2 "typo.toml:3: no option 'stpes'" $BIN "$T/r" --config "$T/typo.toml"
printf 'steps = 3\n\377\376\001\002 = 1\n' >"$T/binary.toml"
refused 2 "binary.toml:2: not a line of text" $BIN "$T/r" --config "$T/binary.toml"
grep -q "$(printf '\377')" "$T/refused.err" && fail "raw bytes echoed"
printf 'steps = 0\n' >"$T/zero.toml"
refused 2 "--steps: 0 is not an integer >= 1" $BIN "$T/r" --config "$T/zero.toml"
printf 'model-config = "tiny"\nsteps = 1\nbatch = 2\nseq-len = 16\nthreads = 1\n' >"$T/good.toml"
$BIN "$T/cfg" --config "$T/good.toml" 2>"$T/err" || fail "valid --config: $(cat "$T/err")"
$BIN --help | grep -q -- "--resume" || fail "--help"
$BIN --version | grep -q "ds-pretrain" || fail "--version"
echo ok
