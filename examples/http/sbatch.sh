#!/bin/sh
# A provisioner that submits one Slurm job running a worker (dagrun calls it again,
# up to max_workers times, while tasks wait for workers).
# sbatch exports this environment to the job (DAGRUN_TOKEN, PATH, PYTHONPATH);
# the build's server must be reachable from the compute nodes: bind = "0.0.0.0:0"
# (or the login node's address) in [executors.NAME].
# WORKER_JOBS: tasks at once per worker; SBATCH_OPTIONS: more sbatch options;
# SLURM_LOG_DIR: where the job's output goes; DAGRUN: the command that runs dagrun.
set -eu
url=$1
jobs=${WORKER_JOBS:-1}
# shellcheck disable=SC2086 # SBATCH_OPTIONS is a list of options
exec sbatch --parsable --job-name=dagrun-worker --ntasks=1 --cpus-per-task="$jobs" \
    --output="${SLURM_LOG_DIR:-.}/dagrun-worker-%j.out" ${SBATCH_OPTIONS:-} \
    --wrap="exec ${DAGRUN:-dagrun} worker $url --jobs $jobs"
