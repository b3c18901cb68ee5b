#!/usr/bin/env bash
# The example inference service with the Qwen2.5-7B shape on a real GPU, under a short load, and what
# the chain reports about it: for a session that is lent a GPU machine. Not run in CI.
#
#   scripts/gpu_example_check.sh                 # python3 on PATH
#   PYTHON=/path/to/python scripts/gpu_example_check.sh
#   REQUESTS=96 CONCURRENCY=16 scripts/gpu_example_check.sh
#   DEVICE=cpu REQUESTS=16 scripts/gpu_example_check.sh   # rehearsal: tiny model, no GPU
#
# Needs on that machine: an NVIDIA GPU with >= 24 GB (the 7.6 G parameters are 15.2 GB in bf16, plus
# the KV caches), a PYTHON with a CUDA build of torch, transformers, and qwen-fluent with its test
# extras (starlette, uvicorn, httpx). Nothing is downloaded: the weights are random, built on the GPU.
#
# Prints, each beside the others so they can be compared:
#   - the load generator's view: requests/s, P50/P90/P99 latency and TTFT of successful requests;
#   - GPU memory: torch's peak allocation (the service's stderr) and nvidia-smi's during the load;
#   - `qwen-fluent analyze` of the service's request log (P50/P99, tokens, GPU memory in the lines);
#   - the log shipped over Forward to `qwen-fluent serve` (NVML on): its request counts, latency
#     histogram sums and qwen_gpu_* gauges from /metrics.
# Bound: about 2-4 minutes on an H100 (model build ~20 s, 48 requests of <= 64 tokens).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
REQUESTS=${REQUESTS:-48}
CONCURRENCY=${CONCURRENCY:-8}
# DEVICE=cpu rehearses the plumbing on a machine without a GPU, with the tiny model.
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cpu ]; then
    SHAPE=tiny SIZE_FLAG="" MODEL=qwen2-tiny-random NO_GPU=--no-gpu
else
    SHAPE=Qwen2.5-7B SIZE_FLAG=--full-size MODEL=qwen2.5-7b-instruct-random NO_GPU=""
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-example.XXXXXX")
SERVICE_PID=""
RECEIVER_PID=""
WATCH_PID=""
cleanup() {
    [ -n "$WATCH_PID" ] && kill "$WATCH_PID" 2>/dev/null || true
    [ -n "$SERVICE_PID" ] && kill "$SERVICE_PID" 2>/dev/null || true
    [ -n "$RECEIVER_PID" ] && kill "$RECEIVER_PID" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT

say() { printf '== %s\n' "$*"; }

[ -n "$NO_GPU" ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
DEVICE=$DEVICE "$PY" - <<'EOF'
import os, sys
import torch, transformers, qwen_fluent
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, "
      f"qwen-fluent {qwen_fluent.__version__}")
if os.environ["DEVICE"] != "cpu" and not torch.cuda.is_available():
    sys.exit("torch sees no GPU: this check needs a CUDA build of torch")
EOF

# The receiver first, NVML on, so that its GPU gauges are scraped while the model serves.
read -r FWD MET < <("$PY" -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
"$PY" -m qwen_fluent serve --host 127.0.0.1 --port "$FWD" --metrics-host 127.0.0.1 --metrics-port "$MET" \
    $NO_GPU > /dev/null 2> "$WORK/serve.err" &
RECEIVER_PID=$!
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$MET/readyz" > /dev/null && break
    sleep 0.5
done

say "service: $SHAPE shape on $DEVICE, $CONCURRENCY workers"
"$PY" examples/inference_server/server.py $SIZE_FLAG --device "$DEVICE" --port 0 --concurrency "$CONCURRENCY" \
    --max-queue 256 --max-model-len 4096 > "$WORK/service.log" 2> "$WORK/service.err" &
SERVICE_PID=$!
for _ in $(seq 300); do
    grep -q '^listening on ' "$WORK/service.err" && break
    kill -0 "$SERVICE_PID" 2>/dev/null || { cat "$WORK/service.err"; exit 1; }
    sleep 1
done
URL=$(grep -o 'http://[^ ]*' "$WORK/service.err" | head -n 1)
[ -n "$URL" ] || { cat "$WORK/service.err"; echo "the service did not start in 300 s"; exit 1; }
grep 'model ' "$WORK/service.err"

# During the load, once a second: nvidia-smi's memory used, and the receiver's NVML gauge.
(
    while true; do
        if [ -z "$NO_GPU" ]; then
            nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits >> "$WORK/smi.txt" 2>/dev/null || true
        fi
        curl -s "http://127.0.0.1:$MET/metrics" | grep -E '^qwen_gpu_memory_used_bytes' >> "$WORK/nvml.txt" || true
        sleep 1
    done
) &
WATCH_PID=$!
say "load: $REQUESTS requests, $CONCURRENCY at a time"
timeout 600 "$PY" examples/inference_server/loadgen.py --url "$URL" --model "$MODEL" \
    --requests "$REQUESTS" --concurrency "$CONCURRENCY" --seed 1 --bad 0.05 --prompt-tokens 200 \
    --output-tokens 48 --max-output-tokens 64 --out "$WORK/truth.json" --quiet
kill "$WATCH_PID" 2>/dev/null || true
kill -TERM "$SERVICE_PID"
wait "$SERVICE_PID" 2>/dev/null || true
SERVICE_PID=""
grep 'peak GPU memory' "$WORK/service.err" || true
[ -s "$WORK/smi.txt" ] && echo "nvidia-smi peak memory used during the load: $(sort -n "$WORK/smi.txt" | tail -n 1) MiB"
[ -s "$WORK/nvml.txt" ] && echo "qwen_gpu_memory_used_bytes peak during the load: $(awk '{print $2}' "$WORK/nvml.txt" | sort -g | tail -n 1)"

say "qwen-fluent analyze (the service's request log, $(wc -l < "$WORK/service.log") lines)"
"$PY" -m qwen_fluent analyze "$WORK/service.log" --format json > "$WORK/analyze.json"
"$PY" - "$WORK/analyze.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
t = r["total_time_seconds"]
print(f"requests {r['requests']}  by status {r['by_status']}  qps {r['qps']:.2f}")
print(f"total time p50 {t['p50']:.3f} s  p99 {t['p99']:.3f} s; output tokens {r['output_tokens']['sum']}")
for key in ("gpu_memory_mb", "gpu_memory"):
    if key in r:
        print(f"{key}: {r[key]}")
EOF

say "Forward -> qwen-fluent serve -> /metrics"
"$PY" -m qwen_fluent send "$WORK/service.log" --port "$FWD" --gzip --ack --tag llm.inference
sleep 1
curl -s "http://127.0.0.1:$MET/metrics" > "$WORK/metrics.txt"
grep -E '^qwen_(requests_total|request_duration_seconds_(sum|count)|output_tokens_total|gpu_memory_reported_bytes)' \
    "$WORK/metrics.txt" | grep -v ' 0.0$' || true
grep -E '^qwen_gpu_(memory_used_bytes|memory_total_bytes|utilization_ratio|power_watts)' "$WORK/metrics.txt" || true

say "loadgen's view (ground truth)"
"$PY" -c 'import json, sys; print(json.dumps(json.load(open(sys.argv[1]))["summary"], indent=1))' "$WORK/truth.json"
echo "files: $WORK"
trap - EXIT
cleanup
