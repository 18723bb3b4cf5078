#!/bin/bash
# Admission control under real overload: bench_sipp_load.py with two nodes behind Kamailio, the
# first node held to a share of one core (a cgroup-v1 CPU quota, 10 ms periods), so it passes
# its capacity at a few dozen calls while the second does not. Compare the first node's CDRs
# with admission on (the defaults) and off (SPG_ADMISSION__MAX_TICK_LAG_MS=0
# SPG_ADMISSION__MAX_LOOP_LAG_MS=0 in the environment): with it, its refused INVITEs fail over
# to the second node and the calls it took keep their digits.
#
# Run as root on a machine with /sys/fs/cgroup/cpu (cgroup v1):
#   bench/admission_cpu_quota.sh [QUOTA_US=1000] [CALLS=240] [RATE=8] [MEDIA=silent]
# (MEDIA: bench_sipp_load.py --media; silent callers are what bench/RESULTS.md reports)
# Prints bench_sipp_load.py's summary, then each node's CDR results and the first node's
# refusals. Timing-sensitive: one run is one sample.
set -euo pipefail
QUOTA=${1:-1000}; CALLS=${2:-240}; RATE=${3:-8}; MEDIA=${4:-silent}
REPO=$(cd "$(dirname "$0")/.." && pwd)
CG=/sys/fs/cgroup/cpu/spg_admission_bench_$$
mkdir "$CG"
trap 'for p in $(cat "$CG/cgroup.procs" 2>/dev/null); do echo "$p" > /sys/fs/cgroup/cpu/cgroup.procs; done; rmdir "$CG"' EXIT
echo 10000 > "$CG/cpu.cfs_period_us"
echo "$QUOTA" > "$CG/cpu.cfs_quota_us"
OUT=$(mktemp)
"$REPO/.venv/bin/python" "$REPO/bench/bench_sipp_load.py" --media "$MEDIA" --nodes 2 --calls "$CALLS" --rate "$RATE" >"$OUT" 2>&1 &
BENCH=$!
NODE=""
for _ in $(seq 1 300); do  # the first node started: its process goes into the cgroup
  NODE=$(pgrep -f "$REPO/.venv/bin/spg-media serve" | head -1 || true)
  [ -n "$NODE" ] && break
  sleep 0.1
done
[ -n "$NODE" ] && echo "$NODE" > "$CG/cgroup.procs"
WORK=$(dirname "$(readlink "/proc/$NODE/cwd")")
wait $BENCH || true
grep -E "^(SIPp|[0-9]+ calls|peak|CPU)" "$OUT" || tail -20 "$OUT"
rm -f "$OUT"
echo "first node held to $QUOTA us of CPU per 10 ms (work files: $WORK)"
for node in node0 node1; do
  "$REPO/.venv/bin/python" - "$WORK/$node/cdr.jsonl" "$node" <<'PY'
import collections, json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"  {sys.argv[2]}: {len(rows)} calls", dict(collections.Counter(r["result"] for r in rows)))
PY
done
echo "  node0 refusal periods: $(grep -c 'refusing new calls' "$WORK/node0/spg-media.stderr.log" || true)"
