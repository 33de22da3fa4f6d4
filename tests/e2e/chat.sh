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

# Terminal mode through a pseudo-terminal, where `script` exists.
if command -v script >/dev/null 2>&1; then
  (sleep 1; printf 'What is 3 + 5?\r'; sleep 2; printf '/stats\r/save %s\r/clear\r/load %s\r/quit\r' "$T/c.json" "$T/c.json") |
    HOME="$T" NO_COLOR=1 script -qfc "$CHAT" /dev/null >"$T/tty" 2>&1
  grep -q "generated [0-9]* tokens" "$T/tty" || fail "/stats in terminal mode: $(cat "$T/tty")"
  grep -q '"role": "assistant"' "$T/c.json" || fail "/save wrote no conversation"
  [ -s "$T/.ds_chat_history" ] || fail "no line-editing history written"
fi

set +e
$BIN/ds-chat 2>/dev/null; [ $? -eq 2 ] || fail "missing --model is a usage error"
echo hi | $BIN/ds-chat -m "$T/nothing" 2>"$T/err"; [ $? -eq 1 ] && grep -q nothing "$T/err" || fail "missing model"
echo hi | $BIN/ds-chat -m "$T/run" --template bogus 2>/dev/null; [ $? -eq 2 ] || fail "unknown template"
set -e
echo ok
