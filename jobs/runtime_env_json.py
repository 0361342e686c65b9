"""Print jobs/runtime_env.yaml as JSON with this shell's storage credentials added to env_vars.

`ray job submit` starts the job's driver and workers on the cluster, not in the submitting shell, so
AWS_* (keys, region, AWS_ENDPOINT_URL for S3-compatible stores) and GOOGLE_APPLICATION_CREDENTIALS
reach them only through the runtime_env. Nodes with an instance role need none of them.
    ray job submit --runtime-env-json "$(python jobs/runtime_env_json.py)" -- python -m editflow run ...
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

FORWARDED_PREFIXES = ("AWS_", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")


def runtime_env(path: Path = Path(__file__).with_name("runtime_env.yaml")) -> dict:
    env = yaml.safe_load(path.read_text()) or {}
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_PREFIXES)}
    env["env_vars"] = {**env.get("env_vars", {}), **forwarded}
    return env


if __name__ == "__main__":
    json.dump(runtime_env(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("runtime_env.yaml")),
              sys.stdout)
