#!/bin/sh
# ds-bench --only allreduce under mpirun -np 3: rank 0 alone prints one JSON object with a row per size, its bytes
# as asked, a positive time and bandwidth, and the bus bandwidth algbw * 2 (n - 1) / n; the table; one process
# alone is a usage error.
set -eu
. "$(dirname "$0")/mpi.inc"
BIN=$DS_BIN/ds-bench

$MPIRUN -np 3 "$BIN" --only allreduce --allreduce-mb 0.25,1 --min-time 0.05 --json >"$T/out.json" 2>"$T/err" ||
  fail "3 ranks: $(cat "$T/err")"
[ "$(wc -l <"$T/out.json")" -eq 1 ] || fail "expected one line from rank 0 only: $(cat "$T/out.json")"
grep -q '"backend":"mpi"' "$T/out.json" || fail "no mpi backend: $(cat "$T/out.json")"
grep -q '"ranks":3' "$T/out.json" || fail "not 3 ranks: $(cat "$T/out.json")"
# One line per size: bytes, algbw, busbw, best_us.
sed 's/},{/\n/g' "$T/out.json" | sed -n 's/.*"algbw_gb_per_s":\([^,]*\).*"best_us":\([^,]*\).*"busbw_gb_per_s":\([^,]*\).*"bytes":\([0-9]*\).*/\4 \1 \3 \2/p' \
  >"$T/rows"
[ "$(cut -d' ' -f1 "$T/rows" | tr '\n' ' ')" = "262144 1048576 " ] || fail "sizes: $(cat "$T/out.json")"
awk '{ if (!($2 > 0 && $4 > 0)) bad = "non-positive figure: " $0
       if (($3 - $2 * 4 / 3) ^ 2 > 1e-12 * $3 ^ 2) bad = "busbw is not algbw * 4 / 3: " $0
       if (($2 - $1 / $4 / 1e3) ^ 2 > 1e-12 * $2 ^ 2) bad = "algbw is not bytes / time: " $0 }
     END { if (bad) { print bad; exit 1 } }' "$T/rows" || fail "$(cat "$T/out.json")"

$MPIRUN -np 2 "$BIN" --only allreduce --allreduce-mb 1 --min-time 0.05 >"$T/table" 2>/dev/null || fail "table run"
grep -q '^all-reduce of float32 sums in place over 2 ranks (mpi, cpu)' "$T/table" || fail "no title: $(cat "$T/table")"
grep -Eq '^1 +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]+$' "$T/table" || fail "no 1 MiB row: $(cat "$T/table")"

set +e
"$BIN" --only allreduce >/dev/null 2>"$T/one.err"
rc=$?
set -e
[ $rc = 2 ] || fail "one process: exit $rc, not 2"
grep -q "launch ds-bench with mpirun" "$T/one.err" || fail "one process: $(cat "$T/one.err")"
