#!/usr/bin/env bash
# Instructions the broker spends on a fixed mix of loads (200k 1→1, 40k
# fan-out 1→5, 200k publish-only, 5k request/reply; 128 B), counted by
# callgrind only while the load runs: repeatable to about 1 %, whatever else
# the machine does. Valgrind 3.19 cannot read Swift 6 debug info: give it a
# binary stripped of it (objcopy --strip-debug).
#   Tests/Benchmarks/callgrind_broker.sh BINARY TAG [PORT]   (GONATS: the load generator)
set -euo pipefail
bin=$1 tag=$2 port=${3:-24333}
gen=${GONATS:-/tmp/gonats}
rm -f "/tmp/cg.$tag.out"*
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="/tmp/cg.$tag.out" "$bin" run --listen "127.0.0.1:$port" \
    > "/tmp/cg.$tag.log" 2>&1 &
pid=$!
for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.3; done
callgrind_control -i on "$pid" >/dev/null
"$gen" bench -url "nats://127.0.0.1:$port" -mode pubsub -size 128 -n 200000
"$gen" bench -url "nats://127.0.0.1:$port" -mode fanout -size 128 -n 40000
"$gen" bench -url "nats://127.0.0.1:$port" -mode pub -size 128 -n 200000
"$gen" bench -url "nats://127.0.0.1:$port" -mode reqrep -size 128 -n 5000 >/dev/null
callgrind_control -i off "$pid" >/dev/null
kill -TERM "$pid"; wait "$pid" || true
grep -E "Collected" "/tmp/cg.$tag.log"
