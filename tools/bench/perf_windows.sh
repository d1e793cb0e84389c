# shellcheck shell=bash
# Sourced by profile_service.sh and profile_router.sh: per-call figures of one
# process under a load from imagesearch-loadgen (run with --report_every_s,
# its output in a file), measured in two windows:
#
#   perf_windows PID OUT SECS SYSCALLS...: window 1 counts the process's CPU
#     (cpu-clock) and context switches into OUT/cpu.txt and records its
#     profile into OUT/perf.data; window 2 counts the given system calls
#     (tracepoints, which cost CPU of their own, hence apart) into
#     OUT/stat.txt. Each window's ends are taken inside perf stat's timed
#     command (OUT/w0, w1, w2, w3), so the calls counted are the CPU's.
#   calls_between LOADGEN_TXT T0 FROM TO: the calls the loadgen made between
#     two `date +%s.%N` times, interpolated from its running count ("loadgen:
#     12.25s N calls, ..."); T0 is when the loadgen started.
#   per_call_report OUT LOADGEN_TXT T0 UNIT UNITS: prints context switches and
#     each system call per UNIT (call, query; UNITS its plural), and sets
#     CPU_US_PER_CALL.
#   cpu_per_call OUT LOADGEN_TXT T0: sets CPU_US_PER_CALL from window 1 alone
#     (OUT/cpu.txt, w0, w1), for a caller that ran only that window.
#   search_share PERF_DATA: prints the percentage of the samples in
#     imagesearch::index (the searcher, its distance kernels and heaps): the
#     search, in the split of a call's CPU into the search and the rest.
#   loadgen_client CLIENT: checks that perf is installed and sets
#     CLIENT_FLAGS, imagesearch-loadgen's flags for CLIENT (callback, or poll:
#     its thread spins instead of sleeping); exits on a wrong CLIENT.
loadgen_client() {
  CLIENT_FLAGS=()
  case "$1" in
    callback) ;;
    poll) CLIENT_FLAGS+=(--poll) ;;
    *) echo "CLIENT must be callback or poll, not '$1'" >&2; exit 2 ;;
  esac
  command -v perf > /dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
}

perf_windows() {
  local pid="$1" out="$2" secs="$3" events="" call stat_pid record_pid
  shift 3
  # shellcheck disable=SC2016  # $1 and $2 are sh -c's arguments.
  perf stat -e context-switches,cpu-clock -p "$pid" -o "$out/cpu.txt" -- \
    sh -c 'date +%s.%N > "$1/w0"; sleep "$2"; date +%s.%N > "$1/w1"' sh "$out" "$secs" 2> /dev/null &
  stat_pid=$!
  perf record -F 2000 -g -p "$pid" -o "$out/perf.data" -- sleep "$secs" > /dev/null 2>&1 &
  record_pid=$!
  wait "$stat_pid"
  wait "$record_pid" || true
  for call in "$@"; do events+="${events:+,}syscalls:sys_enter_$call"; done
  # shellcheck disable=SC2016
  perf stat -e "$events" -p "$pid" -o "$out/stat.txt" -- \
    sh -c 'date +%s.%N > "$1/w2"; sleep "$2"; date +%s.%N > "$1/w3"' sh "$out" "$secs" 2> /dev/null
}

calls_between() {
  awk -v t0="$2" -v a="$3" -v b="$4" '
    function at(x,   i) {
      for (i = 2; i <= n; ++i) if (t[i] >= x) return c[i-1] + (c[i] - c[i-1]) * (x - t[i-1]) / (t[i] - t[i-1])
      return c[n] }
    /^loadgen: [0-9.]+s [0-9]+ calls/ { n++; t[n] = $2 + 0; c[n] = $3 + 0 }
    END { if (n >= 2) printf "%.0f", at(b - t0) - at(a - t0); else print 0 }' "$1"
}

CPU_US_PER_CALL=0
cpu_per_call() {
  local out="$1" load="$2" t0="$3" calls
  calls="$(calls_between "$load" "$t0" "$(cat "$out/w0")" "$(cat "$out/w1")")"
  CPU_US_PER_CALL="$(awk -v w="$calls" '$2 == "msec" && $3 == "cpu-clock" && w > 0 {
    gsub(",", "", $1); printf "%.1f", $1 * 1000 / w }' "$out/cpu.txt")"
  CPU_US_PER_CALL="${CPU_US_PER_CALL:-0}"
}

per_call_report() {
  local out="$1" load="$2" t0="$3" unit="$4" units="$5" cpu_calls sys_calls
  cpu_calls="$(calls_between "$load" "$t0" "$(cat "$out/w0")" "$(cat "$out/w1")")"
  sys_calls="$(calls_between "$load" "$t0" "$(cat "$out/w2")" "$(cat "$out/w3")")"
  awk -v w="$cpu_calls" -v v="$sys_calls" -v u="$unit" -v us="$units" '
    FILENAME ~ /cpu.txt$/ && $2 == "context-switches" && w > 0 {
      gsub(",", "", $1); printf "context-switches: %d in %d %s = %.2f per %s\n", $1, w, us, $1 / w, u }
    FILENAME ~ /stat.txt$/ && $2 ~ /^syscalls:sys_enter_/ && v > 0 {
      gsub(",", "", $1); name = $2; sub("syscalls:sys_enter_", "", name)
      printf "%s: %d in %d %s = %.2f per %s\n", name, $1, v, us, $1 / v, u }' "$out/cpu.txt" "$out/stat.txt"
  cpu_per_call "$out" "$load" "$t0"
}

search_share() {
  perf report -i "$1" --no-children --sort sym --stdio 2> /dev/null |
    awk '/^ +[0-9.]+%/ && /imagesearch::index::/ { sub("%", "", $1); s += $1 } END { printf "%.2f", s }'
}
