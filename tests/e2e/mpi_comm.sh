#!/bin/sh
# The collectives, the data- and expert-parallel equality units and the checkpoint's gathering of the optimizer
# state (tests/unit/comm.cpp, dist_train.cpp, checkpoint.cpp) on 2 ranks.
set -eu
. "$(dirname "$0")/mpi.inc"
$MPIRUN -np 2 "$DS_BIN/tests/ds-unit" --source-file='*/comm.cpp' --no-intro --no-version
$MPIRUN -np 2 "$DS_BIN/tests/ds-unit" --source-file='*/dist_train.cpp' --no-intro --no-version
$MPIRUN -np 2 "$DS_BIN/tests/ds-unit" --source-file='*/checkpoint.cpp' --no-intro --no-version
