#!/bin/sh
# The collectives and the data- and expert-parallel equality units (tests/unit/comm.cpp, dist_train.cpp) on 2 ranks.
set -eu
. "$(dirname "$0")/mpi.inc"
$MPIRUN -np 2 "$DS_BIN/tests/ds-unit" --source-file='*/comm.cpp' --no-intro --no-version
$MPIRUN -np 2 "$DS_BIN/tests/ds-unit" --source-file='*/dist_train.cpp' --no-intro --no-version
