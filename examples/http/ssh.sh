#!/bin/sh
# A provisioner that starts one worker on each of HOSTS over ssh.
# The token goes over ssh's stdin into a private file on the host, never on a
# command line.  The hosts must reach the build's server: bind = "0.0.0.0:0"
# (or this machine's address) in [executors.NAME], ideally with tls_cert/tls_key.
# WORKER_JOBS: tasks at once per worker; DAGRUN: the command that runs dagrun there.
set -eu
url=$1
for host in ${HOSTS:?set HOSTS to the machines to start workers on}; do
    printf '%s\n' "$DAGRUN_TOKEN" | ssh "$host" \
        "umask 077; t=\$(mktemp) && cat >\"\$t\" && ${DAGRUN:-dagrun} worker $url --jobs ${WORKER_JOBS:-1} --token-file \"\$t\"; rm -f \"\$t\"" \
        >/dev/null 2>&1 &
done
wait
