#!/usr/bin/env bash
# Submit an editflow run to a Ray cluster and wait for it (exit 0 when the job succeeded).
#   RAY_API_SERVER_ADDRESS=http://head:8265 jobs/submit.sh MANIFEST OUT [editflow run options...]
# MANIFEST is relative to the repository root (shipped as the working dir) or a URI the cluster
# can read (s3://, gs://, ...); OUT is an object-store URI or a path every node can write (a shared
# filesystem). AWS_* / GOOGLE_APPLICATION_CREDENTIALS set in this shell are forwarded to the job.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 2 ]; then
  echo "usage: $0 MANIFEST OUT [editflow run options...]" >&2
  exit 64
fi
manifest=$1 out=$2
shift 2
exec ray job submit \
  --submission-id "editflow-$(date -u +%Y%m%dT%H%M%S)-$$" \
  --runtime-env-json "$(python jobs/runtime_env_json.py)" \
  --entrypoint-num-cpus 1 \
  -- python -m editflow run "$manifest" -o "$out" "$@"
