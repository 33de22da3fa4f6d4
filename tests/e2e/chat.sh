#!/bin/sh
# ds-chat from a pipe (plain and JSONL) and through a pseudo-terminal (commands, streaming, /save and /load).
set -eu
BIN=${DS_BIN:?}
. "$(dirname "$0")/scratch.inc"
$BIN/ds-pretrain "$T/run" --model-config tiny --steps 3 --batch 2 --seq-len 32 --threads 1 2>/dev/null
CHAT="$BIN/ds-chat -m $T/run --template none --temperature 0 --max-new-tokens 12 --threads 1"

# Pipe mode: one answer line per prompt line; greedy answers are reproducible.
printf 'What is 3 + 5?\nWhat is 2 * 4?\n' | $CHAT >"$T/a" 2>/dev/null
[ "$(wc -l <"$T/a")" -eq 2 ] || fail "pipe mode wrote $(wc -l <"$T/a") lines for 2 prompts"
printf 'What is 3 + 5?\nWhat is 2 * 4?\n' | $CHAT >"$T/b" 2>/dev/null
cmp -s "$T/a" "$T/b" || fail "greedy answers differ between runs"
printf '{"prompt": "What is 3 + 5?"}\n' | $CHAT --jsonl >"$T/j" 2>/dev/null
grep -q '^{"completion":.*"prompt":"What is 3 + 5?"}$' "$T/j" || fail "jsonl output: $(cat "$T/j")"
set +e
printf 'not json\n' | $CHAT --jsonl >/dev/null 2>"$T/err"; rc=$?
set -e
[ $rc -eq 1 ] && grep -q "<stdin>:1" "$T/err" || fail "malformed jsonl line: exit $rc, $(cat "$T/err")"

# One answer line per prompt line even when replies hold newlines: they come escaped (\n, and \\ for a backslash),
# and --jsonl keeps the exact text. Sampling at temperature 2 from the barely trained model gives some newlines.
SAMPLED="$BIN/ds-chat -m $T/run --template none --temperature 2 --max-new-tokens 48 --seed 7 --threads 1"
seq 40 | sed 's/^/prompt /' >"$T/prompts"
$SAMPLED <"$T/prompts" >"$T/text" 2>/dev/null
sed 's/.*/{"prompt": "&"}/' "$T/prompts" | $SAMPLED --jsonl >"$T/exact" 2>/dev/null
[ "$(wc -l <"$T/text")" -eq 40 ] && [ "$(wc -l <"$T/exact")" -eq 40 ] || fail "pipe mode: not 40 lines for 40 prompts"
jq -e -s 'map(select(.completion | test("\n"))) | length > 0' "$T/exact" >/dev/null || fail "no reply with a newline"
grep -q '\\n' "$T/text" || fail "no escaped newline in the replies"

# A prompt that fails (a 1 MB line, past the context) is named by its line and answered with an empty line; the
# next prompt is still answered, and the run exits 1.
{ echo 'What is 3 + 5?'; head -c 1048576 /dev/zero | tr '\0' a; echo; echo 'What is 2 * 4?'; } >"$T/big"
rc=0
$CHAT <"$T/big" >"$T/out" 2>"$T/err" || rc=$?
[ $rc -eq 1 ] && [ "$(wc -l <"$T/out")" -eq 3 ] && [ -z "$(sed -n 2p "$T/out")" ] && [ -n "$(sed -n 3p "$T/out")" ] ||
  fail "failed prompt: exit $rc, $(wc -l <"$T/out") lines"
grep -q "^ds-chat: <stdin>:2: the conversation (10485[0-9]* tokens) does not fit" "$T/err" &&
  grep -q "^ds-chat: <stdin>: 1 of 3 prompts failed$" "$T/err" && [ "$(wc -l <"$T/err")" -eq 2 ] ||
  fail "failed prompt message: $(head -c 300 "$T/err")"
printf '{"prompt": "a"}\nnot json\n' | $CHAT --jsonl >"$T/j" 2>/dev/null || true
[ "$(wc -l <"$T/j")" -eq 2 ] && sed -n 2p "$T/j" | grep -q '"error":"not a {\\"prompt\\": ...} line' ||
  fail "failed JSONL prompt: $(cat "$T/j")"
set +e
refused 2 "--temperature: -1 is not a number >= 0" $CHAT --temperature -1
refused 2 "--temperature: nan" $CHAT --temperature nan
refused 2 "--top-p: 2 is not in (0, 1]" $CHAT --top-p 2
refused 2 "--top-k: -3 is not an integer >= 0" $CHAT --top-k -3
refused 2 "--repetition-penalty: 0 is not a number > 0" $CHAT --repetition-penalty 0

# Terminal mode through a pseudo-terminal, where `script` exists.
if command -v script >/dev/null 2>&1; then
  (sleep 1; printf 'What is 3 + 5?\r'; sleep 2; printf '/stats\r/save %s\r/clear\r/load %s\r' "$T/c.json" "$T/c.json"
    printf '/set top_p 2\r/set temperature nan\r/set temperature 0.5\r/set bogus 1\r'
    printf '%s\r/quit\r' "$(head -c 600 /dev/zero | tr '\0' x)") |
    HOME="$T" NO_COLOR=1 script -qfc "$CHAT" /dev/null >"$T/tty" 2>&1
  grep -q "generated [0-9]* tokens" "$T/tty" || fail "/stats in terminal mode: $(cat "$T/tty")"
  grep -q '"role": "assistant"' "$T/c.json" || fail "/save wrote no conversation"
  [ -s "$T/.ds_chat_history" ] || fail "no line-editing history written"
  # /set checks its value as the option does, and says what it set.
  grep -q "/set top_p: 2 is not in (0, 1\]" "$T/tty" && grep -q "/set temperature: nan is not a number >= 0" "$T/tty" &&
    grep -q "^temperature = 0.5" "$T/tty" && grep -q "/set: unknown setting 'bogus'" "$T/tty" ||
    fail "/set: $(cat "$T/tty")"
  # A message past the context is refused, with the way out named, and the session goes on.
  grep -q "does not fit the model's context of 256; /clear starts a new one" "$T/tty" || fail "long line: $(cat "$T/tty")"
fi

set +e
$BIN/ds-chat 2>/dev/null; [ $? -eq 2 ] || fail "missing --model is a usage error"
echo hi | $BIN/ds-chat -m "$T/nothing" 2>"$T/err"; [ $? -eq 1 ] && grep -q nothing "$T/err" || fail "missing model"
echo hi | $BIN/ds-chat -m "$T/run" --template bogus 2>/dev/null; [ $? -eq 2 ] || fail "unknown template"
set -e
echo ok
