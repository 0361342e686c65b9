#!/usr/bin/env bash
# Start a Ray head on 127.0.0.1, submit the demo manifest with `ray job submit`, wait for it,
# and stop only the cluster this script started (never `ray stop`, which stops every Ray on the box).
#   jobs/local_demo.sh [OUT [MANIFEST [editflow run options...]]]
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(python -c 'import os,sys; a=sys.argv[1]; print(a if "://" in a else os.path.abspath(a))' "${1:-out/job-demo}")
manifest=${2:-manifests/demo.jsonl}
shift $(( $# > 2 ? 2 : $# ))
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=token  # heads started by `ray start` use token auth by default (Ray >= 2.59)

free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
gcs_port=$(free_port)
dash_port=$(free_port)
# every port the head opens is a free one: other Ray heads on a shared machine hold the defaults
agent_http_port=$(free_port)
agent_grpc_port=$(free_port)
metrics_port=$(free_port)
runtime_env_port=$(free_port)
log=$(mktemp -t editflow-ray-head.XXXXXX.log)

# --block keeps the head in this child process; terminating it shuts down what it started.
# The head starts without this shell's storage credentials, as a real cluster would: the job gets
# them only through the runtime_env (jobs/runtime_env_json.py).
unset_credentials=()
for name in $(compgen -e | grep -E '^(AWS_|GOOGLE_APPLICATION_CREDENTIALS)' || true); do
  unset_credentials+=(-u "$name")
done
env "${unset_credentials[@]}" ray start --head --block --node-ip-address=127.0.0.1 --port="$gcs_port" \
  --dashboard-host=127.0.0.1 --dashboard-port="$dash_port" --include-dashboard=true \
  --dashboard-agent-listen-port="$agent_http_port" --dashboard-agent-grpc-port="$agent_grpc_port" \
  --metrics-export-port="$metrics_port" --runtime-env-agent-port="$runtime_env_port" \
  --num-cpus=4 --disable-usage-stats >"$log" 2>&1 &
head_pid=$!
stop_head() {
  kill -TERM "$head_pid" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$head_pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$head_pid" 2>/dev/null || true
}
trap stop_head EXIT

export RAY_API_SERVER_ADDRESS="http://127.0.0.1:$dash_port"
for _ in $(seq 1 120); do
  # any HTTP answer (401 under token auth included) means the job server is up
  if python - "$RAY_API_SERVER_ADDRESS" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1] + "/api/version", timeout=2)
except urllib.error.HTTPError:
    pass
PY
  kill -0 "$head_pid" 2>/dev/null || { echo "ray head failed to start:" >&2; cat "$log" >&2; exit 1; }
  sleep 1
done

echo "editflow: submitting $manifest to the head at $RAY_API_SERVER_ADDRESS, output $out"
submit_log=$(mktemp -t editflow-submit.XXXXXX.log)
for attempt in 1 2 3 4 5 6 7 8 9 10; do
  # a fresh head answers before its job agent has registered ("No available agent"): try again
  set +e
  ray job submit --submission-id "editflow-demo-$$-$(date +%s)-$attempt" \
    --runtime-env-json "$(python jobs/runtime_env_json.py)" \
    --entrypoint-num-cpus 0 -- python -m editflow run "$manifest" -o "$out" "$@" 2>&1 | tee "$submit_log"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "$rc" -ne 0 ] && grep -q "No available agent" "$submit_log"; then sleep 3; continue; fi
  break
done
echo "editflow: job finished with exit code $rc; results in $out/results"
exit $rc
