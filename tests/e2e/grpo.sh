#!/bin/sh
# ds-grpo end to end on the tiny model: metrics and rollouts are written, resume is bit-exact, a failing reward command
# stops the run with a clear message and keeps its rollouts, --fp8 trains and is kept by the run, an FP8 base is the KL
# reference FP8 in memory, and reward rises on a trivially learnable task.
set -eu
BIN=${DS_BIN:?}
. "$(dirname "$0")/scratch.inc"

# One thread: test machines are often shared, and OpenMP threads slow down badly on oversubscribed cores.
$BIN/ds-pretrain "$T/base" --model-config tiny --batch 4 --seq-len 64 --steps 30 --threads 1 2>/dev/null
# Reward: the digits a completion holds (its JSON escapes \uXXXX dropped first), found by a rewarder that is started
# once and answers one line per sample.
cat >"$T/digits.sh" <<'EOF'
while read -r line; do
  c=${line#*\"completion\":\"}
  printf '%s' "${c%%\",\"id\":*}" | sed 's/\\u[0-9a-fA-F]\{4\}//g' | tr -cd 0-9 | wc -c
done
EOF
BASE="--model $T/base --template plain --max-new-tokens 12 --threads 1"
DIGITS="--reward-cmd 'sh $T/digits.sh'"
SMALL="$BASE --group-size 4 --prompts-per-step 2"
COMMON="$SMALL $DIGITS"
grpo() { eval "$BIN/ds-grpo $*"; }

# Metrics and rollouts: one metrics record per step, P * G rollouts per step with the documented fields.
grpo "$T/a" $COMMON --steps 3 --rollouts "$T/a.jsonl" 2>"$T/a.log" || fail "training failed: $(cat "$T/a.log")"
[ "$(wc -l <"$T/a/metrics.jsonl")" -eq 3 ] || fail "metrics.jsonl: $(wc -l <"$T/a/metrics.jsonl") records"
for key in reward_mean reward_std accuracy format completion_len_mean completion_len_max clip_fraction entropy \
  zero_variance_groups rollout_tokens_per_s update_tokens_per_s; do
  grep -q "\"$key\":" "$T/a/metrics.jsonl" || fail "metrics lack $key"
done
[ "$(wc -l <"$T/a.jsonl")" -eq 24 ] || fail "rollouts: $(wc -l <"$T/a.jsonl") lines, not 3 steps * 2 * 4"
for key in id prompt completion answer reward correct tokens step; do
  grep -q "\"$key\":" "$T/a.jsonl" || fail "rollouts lack $key"
done
grep -q '"step":3' "$T/a.jsonl" || fail "rollouts lack step 3"
grep -q "step *3/3 reward" "$T/a.log" || fail "no progress line: $(cat "$T/a.log")"
for f in config.json model.safetensors optimizer.safetensors trainer_state.json; do
  [ -s "$T/a/latest/$f" ] || fail "checkpoint lacks $f"
done

# Bit-exact resume, with every moving part on: mu = 2 (clipping), KL to the base, micro-batches, clip-higher.
MORE="--iterations 2 --beta 0.05 --micro-batch 3 --epsilon-high 0.28 --loss dapo --lr 1e-2"
grpo "$T/full" $COMMON $MORE --steps 4 2>/dev/null
grpo "$T/split" $COMMON $MORE --steps 4 --stop-after 2 2>/dev/null
[ -d "$T/split/checkpoints/step-00000002" ] || fail "--stop-after did not save step 2"
grpo --resume "$T/split" $COMMON $MORE --steps 4 2>/dev/null
cmp "$T/full/latest/model.safetensors" "$T/split/latest/model.safetensors" || fail "resumed weights differ"
cmp "$T/full/latest/optimizer.safetensors" "$T/split/latest/optimizer.safetensors" || fail "resumed optimizer differs"
grep -q '"kl":' "$T/full/metrics.jsonl" || fail "no kl metric with --beta"
awk -F'"clip_fraction":' '{ split($2, v, ","); if (v[1] > 0) found = 1 } END { exit !found }' \
  "$T/full/metrics.jsonl" || fail "the second iteration never clipped"

# FP8 emulation: step 1 samples what run a sampled (sampling stays f32) but its gradient went through e4m3 GEMMs, so
# its norm is near a's and not equal to it; the run records --fp8 and a resume must keep it.
grpo "$T/f8" $COMMON --steps 2 --fp8 2>"$T/err" || fail "--fp8 training failed: $(cat "$T/err")"
grep -q '"fp8": true' "$T/f8/latest/trainer_state.json" || fail "trainer state lacks fp8"
g() { sed -n "1s/.*\"grad_norm\":\([^,]*\).*/\1/p" "$1"; }
awk -v a="$(g "$T/a/metrics.jsonl")" -v f="$(g "$T/f8/metrics.jsonl")" 'BEGIN {
  if (!(f != a && f > 0.8 * a && f < 1.25 * a)) { print "fp8 grad norm " f " vs full precision " a; exit 1 } }' ||
  fail "--fp8 gradient"
grpo --resume "$T/f8" --steps 3 2>"$T/err" || fail "--fp8 resume: $(cat "$T/err")"
grep -q '"fp8": true' "$T/f8/latest/trainer_state.json" || fail "the resumed run left --fp8"

# An FP8 base is the KL reference FP8 in memory, on the engine: at step 1 the policy is the dequantized base, so the KL
# is float rounding (not 0: the policy's forward is the training one), and every step's KL is the f32 copy's. With
# --fp8 the reference takes the policy's emulated FP8 forward instead, which makes step 1's KL exactly 0.
$BIN/ds-quantize "$T/base" -o "$T/base8" >/dev/null 2>&1 || fail "ds-quantize"
$BIN/ds-quantize "$T/base8" -o "$T/base8f32" --to f32 >/dev/null 2>&1 || fail "ds-quantize --to f32"
KL="--template plain --max-new-tokens 12 --threads 1 --group-size 4 --prompts-per-step 2 $DIGITS --beta 0.04"
KL="$KL --lr 1e-2 --steps 2"
grpo "$T/kl8" --model "$T/base8" $KL 2>"$T/err" || fail "FP8 base with --beta: $(cat "$T/err")"
grep -q "KL reference .*base8: FP8 in memory" "$T/err" || fail "FP8 reference not resident: $(cat "$T/err")"
grpo "$T/kl32" --model "$T/base8f32" $KL 2>"$T/err" || fail "f32 copy with --beta: $(cat "$T/err")"
grep -q "FP8" "$T/err" && fail "f32 reference reported as FP8: $(cat "$T/err")"
grpo "$T/klf8" --model "$T/base8" $KL --fp8 2>"$T/err" || fail "FP8 base with --beta --fp8: $(cat "$T/err")"
kl() { sed -n "$2s/.*\"kl\":\([^,}]*\).*/\1/p" "$1/metrics.jsonl"; }
awk -v a1="$(kl "$T/kl8" 1)" -v a2="$(kl "$T/kl8" 2)" -v b1="$(kl "$T/kl32" 1)" -v b2="$(kl "$T/kl32" 2)" \
  -v f1="$(kl "$T/klf8" 1)" 'BEGIN { d = a2 - b2; if (d < 0) d = -d
  if (!(a1 < 1e-8 && b1 < 1e-8 && a2 > 1e-3 && d <= 1e-5 * b2 && f1 == 0)) {
    print "KL at steps 1, 2: fp8 base " a1 ", " a2 "; f32 copy " b1 ", " b2 "; --fp8 " f1; exit 1 } }' ||
  fail "KL to an FP8 base"

# SIGTERM finishes the step, saves a checkpoint and exits 0; the run resumes from it.
(eval "exec $BIN/ds-grpo $T/sig $COMMON --steps 100000") 2>/dev/null &  # exec: $! is ds-grpo itself
pid=$!
i=0
while [ ! -f "$T/sig/metrics.jsonl" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
kill -TERM $pid
wait $pid || fail "SIGTERM exit status $?"
step=$(sed -n 's/.*"step": \([0-9]*\).*/\1/p' "$T/sig/latest/trainer_state.json")
grpo --resume "$T/sig" $COMMON --steps $((step + 1)) 2>/dev/null || fail "resume after SIGTERM"

# A reward command that answers step 1 and crashes in step 2: exit 1 naming it, step 2's rollouts kept unscored.
set +e
$BIN/ds-grpo "$T/crash" $SMALL --steps 3 --rollouts "$T/crash.jsonl" \
  --reward-cmd 'i=0; while read -r l; do i=$((i + 1)); [ $i -gt 8 ] && exit 3; echo 1; done' 2>"$T/err"
[ $? -eq 1 ] || fail "crashing rewarder: exit status"
tail -n 1 "$T/err" | grep -q "^ds-grpo: reward command 'i=0.*exited with status 3 after 8 reply lines" ||
  fail "crash message: $(cat "$T/err")"
[ "$(grep -c '"reward":1.0' "$T/crash.jsonl")" -eq 8 ] && [ "$(grep -c '"reward":null' "$T/crash.jsonl")" -eq 8 ] ||
  fail "rollouts of the crash: $(cat "$T/crash.jsonl")"
grpo "$T/hang" $SMALL --steps 1 --reward-cmd "'sleep 30'" --reward-timeout 0.5 2>"$T/err"
[ $? -eq 1 ] && grep -q "reward command 'sleep 30': no reply within 0.5 s" "$T/err" || fail "hang: $(cat "$T/err")"
grpo "$T/junk" $SMALL --steps 1 --reward-cmd "'while read -r l; do echo junk; done'" 2>"$T/err"
[ $? -eq 1 ] && grep -q "line 1: expected a number" "$T/err" || fail "garbage: $(cat "$T/err")"

# Refusals and usage errors.
grpo "$T/a" $COMMON --steps 2 2>"$T/err"; [ $? -eq 1 ] && grep -q "already holds a run" "$T/err" || fail "overwrite"
$BIN/ds-grpo "$T/b" 2>/dev/null; [ $? -eq 2 ] || fail "missing --model is a usage error"
refused 2 "--loss: 'ppo' is not one of grpo, dapo, dr_grpo" $BIN/ds-grpo "$T/b" --model "$T/base" --loss ppo
refused 2 "--scale-rewards: 'batch' is not one of group, none" $BIN/ds-grpo "$T/b" --model "$T/base" --scale-rewards batch
refused 2 "--on-bad-steps: 'retry' is not one of stop, reload" $BIN/ds-grpo "$T/b" --model "$T/base" --on-bad-steps retry
refused 2 "--group-size: 1 is not an integer >= 2" $BIN/ds-grpo "$T/b" --model "$T/base" --group-size 1
refused 2 "--temperature: 0 is not a number > 0" $BIN/ds-grpo "$T/b" --model "$T/base" --temperature 0
refused 2 "--top-p: 2 is not in (0, 1]" $BIN/ds-grpo "$T/b" --model "$T/base" --top-p 2
refused 2 "--epsilon: 5 is not in (0, 1)" $BIN/ds-grpo "$T/b" --model "$T/base" --epsilon 5
refused 2 "--reward-timeout: 0 is not a number > 0" $BIN/ds-grpo "$T/b" --model "$T/base" --reward-timeout 0
refused 2 "--format-weight: nan is not a number" $BIN/ds-grpo "$T/b" --model "$T/base" --format-weight nan
$BIN/ds-grpo "$T/b" --model "$T/nowhere" 2>"$T/err"; [ $? -eq 1 ] && grep -q "nowhere" "$T/err" || fail "bad --model"
$BIN/ds-grpo "$T/b" --model "$T/base" --template r1-zero 2>"$T/err"  # its preamble is longer than tiny's context
[ $? -eq 1 ] && grep -q "prompt is .* tokens with --template r1-zero" "$T/err" || fail "long prompt: $(cat "$T/err")"
[ ! -e "$T/b/latest" ] || fail "a refused start left a checkpoint"
set -e
$BIN/ds-grpo --help | grep -q -- "--reward-cmd" || fail "--help"
$BIN/ds-grpo --version | grep -q "ds-grpo" || fail "--version"

# Learning: the mean reward of the last 5 of 20 steps is well above that of the first 5.
grpo "$T/learn" $BASE $DIGITS --prompts-per-step 4 --group-size 8 --steps 20 --lr 1e-2 2>/dev/null
awk -F'"reward_mean":' '{ split($2, v, ","); r[NR] = v[1] } END {
  first = (r[1] + r[2] + r[3] + r[4] + r[5]) / 5; last = (r[16] + r[17] + r[18] + r[19] + r[20]) / 5;
  if (!(last > 2 * first + 1)) { print "reward did not rise: " first " -> " last; exit 1 } }' "$T/learn/metrics.jsonl"
echo ok
