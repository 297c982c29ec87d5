#!/bin/sh
# A provisioner that starts workers on this machine, in the background.
# dagrun runs it as `local.sh URL` with DAGRUN_TOKEN in the environment (the
# workers read it from there).  WORKERS (default 2) workers, WORKER_JOBS tasks each;
# DAGRUN is the command that runs dagrun (default: dagrun).
set -eu
url=$1
i=0
while [ "$i" -lt "${WORKERS:-2}" ]; do
    i=$((i + 1))
    nohup ${DAGRUN:-dagrun} worker "$url" --jobs "${WORKER_JOBS:-1}" \
        >"${WORKER_LOGS:-/dev/null}" 2>&1 </dev/null &
done
