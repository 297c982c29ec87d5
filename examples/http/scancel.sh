#!/bin/sh
# A deprovisioner for sbatch.sh: cancels the Slurm jobs its runs submitted that are still
# queued (they would start after the build with nothing to do).  Running ones end by
# themselves: the build tells their workers it is over.
# dagrun runs it at the end of the build as `scancel.sh URL`, with DAGRUN_PROVISIONER_LOGS
# naming the provisioner runs' output files, one a line (sbatch --parsable printed each
# job's id there).
set -eu
ids=$(printf '%s\n' "$DAGRUN_PROVISIONER_LOGS" | while IFS= read -r log; do
    if [ -f "$log" ]; then grep -E '^[0-9]+(;.*)?$' "$log" | cut -d';' -f1; fi
done)
if [ -n "$ids" ]; then
    # shellcheck disable=SC2086 # one word per job id
    scancel --state=PENDING $ids
fi
