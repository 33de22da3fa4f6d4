#!/bin/sh
# ds-bench end to end on the tiny model with short timings: one JSON object with positive measurements, the table,
# --only contention (its runs, their ratios, and no busy process left behind, also when ds-bench is killed), and the
# exit codes of --help, a bad flag, a bad shape and an unavailable device.
set -eu
BIN=${DS_BIN:?}/ds-bench
. "$(dirname "$0")/scratch.inc"
FAST="--model-config tiny --batch 2 --seq-len 32 --steps 2 --gemm-shapes 64x64x64,32x48x16 --min-time 0.02 --threads 1
  --decode-batch 1,3 --context 16 --decode-steps 2"

$BIN --json $FAST >"$T/out.json" 2>"$T/err" || fail "ds-bench --json failed: $(cat "$T/err")"
[ "$(wc -l <"$T/out.json")" -eq 1 ] || fail "--json printed more than one line"
grep -q '^{.*}$' "$T/out.json" || fail "not one JSON object: $(cat "$T/out.json")"
# A positive number: 1-9 first, or 0.0...0 then 1-9 (nlohmann writes 0.05 or 5e-05, never +).
positive() {
  echo "$1" | grep -Eq "\"$2\":([1-9]|0\.0*[1-9])" || fail "\"$2\" is not a positive number: $(cat "$T/out.json")"
}
all=$(cat "$T/out.json")
gemm=$(sed -n 's/.*"gemm":\[\([^]]*\)\].*/\1/p' "$T/out.json")
step=$(sed -n 's/.*"step":{\([^}]*\)}.*/\1/p' "$T/out.json")
decode=$(sed -n 's/.*"decode":\[\([^]]*\)\].*/\1/p' "$T/out.json")
for key in threads sgemm_peak_gflops copy_gb_per_s; do positive "$all" $key; done
for key in M N K repeats gflops median_gflops of_peak; do positive "$gemm" $key; done
for key in batch seq_len steps step_ms tokens_per_s flops_per_token gflops mfu; do positive "$step" $key; done
grep -q '"device":"cpu"' "$T/out.json" || fail "no device"
grep -q '"name":"64x64x64"' "$T/out.json" || fail "first shape missing"
grep -q '"name":"32x48x16"' "$T/out.json" || fail "second shape missing"
grep -q '"config":"tiny"' "$T/out.json" || fail "no step config"
for key in batch context prefill_tokens_per_s step_ms tokens_per_s bytes_per_step gb_per_s of_copy \
  cache_bytes_per_token naive_cache_bytes_per_token; do
  positive "$decode" $key
done
echo "$decode" | grep -q '"batch":3,' || fail "no batch-3 decode: $decode"
[ -s "$T/err" ] || fail "no progress on stderr"

# The table: the peak line, one row per shape, the step row; nothing but the step with --only step.
$BIN $FAST >"$T/table" 2>/dev/null || fail "table run failed"
grep -q '^sgemm peak [0-9.]* GFLOP/s' "$T/table" || fail "no peak line: $(cat "$T/table")"
grep -Eq '^64x64x64 +64 +64 +64 ' "$T/table" || fail "no GEMM row: $(cat "$T/table")"
grep -Eq '^tiny +2 x 32 ' "$T/table" || fail "no step row: $(cat "$T/table")"
grep -Eq '^tiny +3 +16 ' "$T/table" || fail "no decode row: $(cat "$T/table")"
$BIN --json --only decode $FAST >"$T/decode.json" 2>/dev/null || fail "--only decode failed"
if grep -Eq '"gemm"|"step"|sgemm_peak' "$T/decode.json"; then fail "--only decode measured more"; fi
$BIN --json --only step $FAST >"$T/step.json" 2>/dev/null || fail "--only step failed"
if grep -q '"gemm"' "$T/step.json"; then fail "--only step measured GEMMs"; fi
grep -q '"step"' "$T/step.json" || fail "--only step has no step"

# --only contention: 1 and 2 threads with 2 busy processes, then quiet; nothing else is measured.
CONT="--only contention --model-config tiny --batch 2 --seq-len 32 --threads 2 --busy 2"
# A busy process of ds-bench that still runs (a zombie has stopped running).
busy_alive() {
  [ "$(cat "/proc/$1/comm" 2>/dev/null)" = ds-bench-busy ] && [ "$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" != Z ]
}
$BIN --json $CONT --steps 2 >"$T/cont.json" 2>"$T/err" || fail "--only contention failed: $(cat "$T/err")"
[ "$(wc -l <"$T/cont.json")" -eq 1 ] || fail "contention --json printed more than one line"
pids=$(sed -n 's/^busy processes: //p' "$T/err")
[ "$(echo $pids | wc -w)" -eq 2 ] || fail "not 2 busy processes: $(cat "$T/err")"
for pid in $pids; do if busy_alive "$pid"; then fail "busy process $pid outlived ds-bench"; fi; done
if grep -Eq '"gemm"|"step"|"decode"|sgemm_peak' "$T/cont.json"; then fail "--only contention measured more"; fi
grep -q '"contention":{"batch":2,"busy":2,"config":"tiny",' "$T/cont.json" || fail "contention: $(cat "$T/cont.json")"
grep -q '"threads":2,' "$T/cont.json" || fail "no thread count: $(cat "$T/cont.json")"
# One line per run: load busy automatic threads tokens_per_s vs_one_thread (nlohmann sorts the keys).
sed -n 's/.*"runs":\[{\(.*\)}\].*/\1/p' "$T/cont.json" | sed 's/},{/\n/g' |
  sed 's/^"automatic":\([a-z]*\),"busy":\([0-9]*\),"load":"\([a-z]*\)","step_ms":[^,]*,"threads":\([0-9]*\),/\3 \2 \1 \4 /' |
  sed 's/"tokens_per_s":\([^,]*\),"vs_one_thread":\(.*\)$/\1 \2/' >"$T/runs"
[ "$(cut -d' ' -f1-3 "$T/runs" | tr '\n' ';')" = \
  "contended 2 false;contended 2 false;contended 2 true;quiet 0 false;quiet 0 false;quiet 0 true;" ] ||
  fail "runs: $(cat "$T/runs")"
# Each load's 1-thread run is its own reference; the others' ratios are their tokens/s over it.
awk 'NR % 3 == 1 { one = $5; if ($4 != 1 || $5 <= 0 || $6 != 1) exit 1 }
     NR % 3 != 1 { r = $5 / one; if ($5 <= 0 || $6 < r * 0.999999 || $6 > r * 1.000001) exit 1 }
     NR == 2 && $4 != 2 { exit 1 }' "$T/runs" || fail "inconsistent runs: $(cat "$T/runs")"
$BIN $CONT --steps 2 >"$T/table" 2>/dev/null || fail "contention table run failed"
grep -q '^training step of tiny on 2 x 32 tokens, 2 threads against 1, 2 busy processes$' "$T/table" ||
  fail "no contention title: $(cat "$T/table")"
grep -Eq '^load +busy +threads +step ms +tokens/s +vs 1 thread$' "$T/table" || fail "no header: $(cat "$T/table")"
grep -Eq '^contended +2 +1 +[0-9.]+ +[0-9]+ +1\.00$' "$T/table" || fail "no contended row: $(cat "$T/table")"
grep -Eq '^quiet +0 +2 +[0-9.]+ +[0-9]+ +[0-9]+\.[0-9][0-9]$' "$T/table" || fail "no quiet row: $(cat "$T/table")"
# Killed while its busy processes run, ds-bench takes them with it.
$BIN $CONT --steps 1000000 >/dev/null 2>"$T/kill.err" &
bench=$!
i=0
until grep -q '^busy processes: ' "$T/kill.err"; do
  i=$((i + 1))
  [ $i -lt 600 ] || { kill -KILL $bench 2>/dev/null || true; fail "no busy processes started: $(cat "$T/kill.err")"; }
  sleep 0.1
done
kill -KILL $bench
wait $bench || true
for pid in $(sed -n 's/^busy processes: //p' "$T/kill.err"); do
  i=0
  while busy_alive "$pid"; do
    i=$((i + 1))
    [ $i -lt 100 ] || { kill -KILL "$pid"; fail "busy process $pid outlived the killed ds-bench"; }
    sleep 0.1
  done
done
code=0; $BIN --only contention --busy -1 >/dev/null 2>"$T/err" || code=$?
[ "$code" -eq 2 ] || fail "--busy -1 exited $code, not 2"

# Exit codes: --help and --version 0; usage errors 2 with a message.
$BIN --help >/dev/null || fail "--help did not exit 0"
$BIN --version | grep -q '^ds-bench ' || fail "--version"
code=0; $BIN --no-such-flag >/dev/null 2>"$T/err" || code=$?
[ "$code" -eq 2 ] || fail "bad flag exited $code, not 2"
code=0; $BIN --gemm-shapes 64x0x64 >/dev/null 2>"$T/err" || code=$?
[ "$code" -eq 2 ] || fail "bad shape exited $code, not 2"
grep -q 'MxNxK' "$T/err" || fail "bad shape message: $(cat "$T/err")"
code=0; $BIN --device cuda:99 >/dev/null 2>"$T/err" || code=$?
[ "$code" -eq 2 ] || fail "--device cuda exited $code, not 2"
grep -q 'cuda' "$T/err" || fail "--device cuda gave no message"
code=0; $BIN --model-config tiny --seq-len 100000 >/dev/null 2>"$T/err" || code=$?
[ "$code" -eq 2 ] || fail "--seq-len beyond the model exited $code, not 2"
code=0; $BIN --model-config tiny --only decode --context 250 --decode-steps 16 >/dev/null 2>"$T/err" || code=$?
[ "$code" -eq 2 ] || fail "--context beyond the model exited $code, not 2"
echo "ok"
