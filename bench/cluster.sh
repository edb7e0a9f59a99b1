#!/usr/bin/env bash
# Replication figures on one machine (issue 12), all from one run:
#   1. produce acks=durable to a single node (--cores 1), the reference;
#   2. the same against a 3-node cluster (acks=all: a majority durable);
#   3. acks=leader against the cluster;
#   4. the cost of idle replicated partitions: a topic of $IDLE_PARTITIONS
#      partitions, nothing produced, each node's CPU and Raft messages/s.
# strom-bench reports each run against its same-run raw fdatasync and
# loopback baselines; the ratios between runs are printed at the end.
# All three nodes share this machine's cores and disk: the cluster figures
# are bounded by that, not by the network.
#
#   bench/cluster.sh [SECONDS] [IDLE_PARTITIONS]     (default 10, 1000)
# Needs release binaries (built if missing; BIN=DIR uses the binaries in
# DIR instead, for A/B runs). ONLY_IDLE=1 runs only 4, SKIP_IDLE=1 only 1-3.
# Leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-10}"
idle="${2:-1000}"
bin="${BIN:-target/release}"
[ -x $bin/strom-server ] && [ -x $bin/strom-bench ] && [ -x $bin/strom ] \
  || cargo build --release --quiet -p strom-server -p strom-bench -p strom-client
work="$(mktemp -d -t strom-cluster-bench.XXXXXX)"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

bench_args=(--message-size 1024 --batch-records 100 --inflight 8 --duration "$secs" --warmup 2 --dir "$work/bench")
mkdir -p "$work/bench"

# ONLY_IDLE=1 skips the produce runs (1-3).
only_idle="${ONLY_IDLE:-0}"
if [ "$only_idle" != 1 ]; then
echo "== 1. single node, acks=durable"
$bin/strom-bench produce --spawn --cores 1 --server-bin $bin/strom-server --acks durable \
  "${bench_args[@]}" --json "$work/single.json" | tee "$work/single.txt"
fi

echo "== starting 3 nodes"
base=$((20000 + RANDOM % 20000))
spec() { echo "$1,raft=127.0.0.1:$((base + 10 * $1 + 2)),kafka=127.0.0.1:$((base + 10 * $1 + 1)),native=127.0.0.1:$((base + 10 * $1))"; }
for n in 1 2 3; do
  peers=()
  for m in 1 2 3; do [ "$m" = "$n" ] || peers+=(--peer "$(spec "$m")"); done
  STROM_LOG=warn $bin/strom-server --cores 1 --node-id "$n" --data-dir "$work/node-$n" \
    --listen "127.0.0.1:$((base + 10 * n))" --shard-ports off --http "127.0.0.1:$((base + 10 * n + 3))" \
    --kafka-listen "127.0.0.1:$((base + 10 * n + 1))" --raft-listen "127.0.0.1:$((base + 10 * n + 2))" \
    "${peers[@]}" > "$work/node-$n.log" 2>&1 &
  pids+=($!)
done
sleep 2
cluster="127.0.0.1:$((base + 10)),127.0.0.1:$((base + 20)),127.0.0.1:$((base + 30))"

if [ "$only_idle" != 1 ]; then
echo "== 2. 3 replicas, acks=all (durable)"
$bin/strom-bench produce --cluster "$cluster" --acks durable "${bench_args[@]}" \
  --json "$work/all.json" | tee "$work/all.txt"
echo "== 3. 3 replicas, acks=leader"
$bin/strom-bench produce --cluster "$cluster" --acks leader "${bench_args[@]}" \
  --json "$work/leader.json" | tee "$work/leader.txt"
fi

if [ "${SKIP_IDLE:-0}" != 1 ]; then
echo "== 4. $idle idle replicated partitions"
created=0
for try in 1 2 3 4 5; do
  for n in 1 2 3; do
    out=$($bin/strom --server "127.0.0.1:$((base + 10 * n))" --request-timeout-ms 60000 \
      topic create idle --partitions "$idle" 2>&1) && { created=1; break 2; }
    # Committed but still being applied (opening the groups), or created.
    case "$out" in *Timeout*|*TopicAlreadyExists*) created=1; break 2;; esac
  done
  sleep 1
done
[ "$created" = 1 ] || { echo "no node created the idle topic: $out"; exit 1; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
msgs() { curl -s "http://127.0.0.1:$((base + 10 * $1 + 3))/metrics" | awk '/^strom_raft_messages_sent_total/ {s += $2} END {print s + 0}'; }
lead() { curl -s "http://127.0.0.1:$((base + 10 * $1 + 3))/metrics" | awk '/^strom_raft_groups_leading/ {s += $2} END {print s + 0}'; }
groups() { curl -s "http://127.0.0.1:$((base + 10 * $1 + 3))/metrics" | awk '/^strom_raft_groups\{/ {s += $2} END {print s + 0}'; }
for _ in $(seq 1 120); do   # every node has opened every group, and leaders are elected
  [ "$(groups 1)" -gt "$idle" ] && [ "$(groups 2)" -gt "$idle" ] && [ "$(groups 3)" -gt "$idle" ] \
    && [ $(( $(lead 1) + $(lead 2) + $(lead 3) )) -gt "$idle" ] && break
  sleep 1
done
sleep 2
hz=$(getconf CLK_TCK)
declare -A t0 m0
for n in 1 2 3; do t0[$n]=$(ticks "${pids[$((n - 1))]}"); m0[$n]=$(msgs "$n"); done
sleep "$secs"
for n in 1 2 3; do
  t1=$(ticks "${pids[$((n - 1))]}"); m1=$(msgs "$n")
  awk -v n="$n" -v dt=$((t1 - t0[$n])) -v hz="$hz" -v s="$secs" -v dm=$((m1 - m0[$n])) -v l="$(lead "$n")" \
    'BEGIN { printf "node %d: %.1f %% of a core, %.0f Raft messages/s sent, leads %d groups\n", n, 100 * dt / hz / s, dm / s, l }'
done

fi
[ "$only_idle" = 1 ] && exit 0
echo "== ratios against the single node (same run): 3 replicas acks=all / single durable"
$bin/strom-bench compare "$work/single.json" "$work/all.json"
echo "== 3 replicas acks=leader / single durable"
$bin/strom-bench compare "$work/single.json" "$work/leader.json"
