# shellcheck shell=bash
# Sourced by ci/deploy.sh and ci/reindex.sh: with KUBECONFIG_DATA set (the
# KUBECONFIG secret's contents), writes it to a file only this user can read,
# under RUNNER_TEMP (or TMPDIR), and exports KUBECONFIG naming it. Without it,
# kubectl uses KUBECONFIG or ~/.kube/config as usual.
if [[ -n "${KUBECONFIG_DATA:-}" ]]; then
  KUBECONFIG="$(umask 077 && mktemp "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/kubeconfig.XXXXXX")"
  printf '%s\n' "$KUBECONFIG_DATA" >"$KUBECONFIG"
  export KUBECONFIG
  unset KUBECONFIG_DATA
fi
