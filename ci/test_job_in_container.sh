#!/usr/bin/env bash
# Runs CI's `test` job (.github/workflows/ci.yml) here the way GitHub's runner
# runs it (ci/run_workflow_job.py): its steps, in order, in a debian:12
# container under podman, unprivileged except for exactly the container
# `options` the job grants, with the job's env. It catches what the host run
# cannot: a package ci/install_deps.sh forgets, a test that needs privileges
# or tools the runner's container lacks, a cache path the container cannot see,
# processes left as zombies by the runner's `tail -f /dev/null` as PID 1.
# For a bounded cost it runs a reduced set (on top of the job's env):
#   SANITIZE=0 FUZZ=0 TSAN=0 JOBS=2, and only the ctest tests matching
#   TEST_JOB_CTEST_ARGS (default: the tests that depend on what the runner's
#   container grants or lacks, which the host run cannot see: e2e_faults
#   (mount), e2e_failover_nginx (PID 1 reaping killed replicas, nginx),
#   e2e_http_under_load (2,000 open connections: the open-file limit) and the
#   browser test; `-LE job` runs every test but the batch indexing job, about
#   20 minutes more);
# the job's actions/cache path (the workspace's .cache/ccache) is this
# machine's CCACHE_DIR, mounted, so the build mostly hits the cache; and the
# container trusts what this machine trusts on its network: each CA bundle
# that NODE_EXTRA_CA_CERTS, SSL_CERT_FILE, CURL_CA_BUNDLE, REQUESTS_CA_BUNDLE or
# GIT_SSL_CAINFO names here is mounted and named the same way there.
#   ci/test_job_in_container.sh [--keep]
# Needs root (rootful podman); re-runs itself under sudo otherwise.
set -euo pipefail
if [[ "$(id -u)" != 0 ]]; then
  command -v sudo >/dev/null || { echo "ci/test_job_in_container.sh: run as root" >&2; exit 1; }
  exec sudo --preserve-env bash "$(readlink -f "$0")" "$@"
fi
cd "$(dirname "$0")/.."
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
ci/podman_base.sh python3-yaml
trust=()
for var in NODE_EXTRA_CA_CERTS SSL_CERT_FILE CURL_CA_BUNDLE REQUESTS_CA_BUNDLE GIT_SSL_CAINFO; do
  [[ ! -f "${!var:-}" ]] || trust+=(--host-file "$var=${!var}")
done
exec /usr/bin/python3 ci/run_workflow_job.py .github/workflows/ci.yml test "$@" "${trust[@]}" \
  --cache ".cache/ccache=${CCACHE_DIR:-$HOME/.cache/ccache}" \
  --env SANITIZE=0 --env FUZZ=0 --env TSAN=0 --env JOBS=2 \
  --env "CTEST_ARGS=${TEST_JOB_CTEST_ARGS:--R e2e_faults|e2e_failover_nginx|e2e_http_under_load|e2e_web_page_chromium}"
