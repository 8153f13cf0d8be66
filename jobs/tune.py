"""`ray job submit` entrypoint for stage 2 with a Ray Tune search, on the output of stage 1.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- \
        python jobs/tune.py --from s3://bucket/runs/enc1 --config configs/main.yaml \
        --out s3://bucket/runs/tune1 --ledger s3://bucket/ledger.json --epsilon 8 \
        --set tune.trials=8 --set tune.max_concurrent_trials=4

The job's driver runs `tdpdm diffuse` (same flags); its trials are scheduled on the cluster the
job was submitted to (Ray sets RAY_ADDRESS for the driver). The search must be asked for
(`tune.trials` > 0 in --config or --set): otherwise this would silently be a plain stage-2 job.
In `private` mode every trial reserves its own ledger charge before it reads the private
latents; trials that do not fit the budget are refused and listed as such in the report.
"""

from __future__ import annotations

import sys

from tdpdm.cli import main
from tdpdm.config import ConfigError, load_config


def trials_asked(argv: list[str]) -> int:
    """`tune.trials` as the CLI will see it: --config, then --set overrides (last one wins)."""
    config, sets = None, {}
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if "=" in arg and arg.startswith("--") else None
        if value is None and i + 1 < len(argv):
            value = argv[i + 1]
        if arg.startswith("--config"):
            config = value
        elif arg.startswith("--set") and value and "=" in value:
            key, item = value.split("=", 1)
            sets[key.strip()] = item.strip()
    overrides = {"tune.trials": sets["tune.trials"]} if "tune.trials" in sets else {}
    return load_config(config, overrides).tune.trials


if __name__ == "__main__":
    args = sys.argv[1:]
    try:
        if trials_asked(args) < 1:
            print("jobs/tune.py: ask for a search with --set tune.trials=N", file=sys.stderr)
            raise SystemExit(2)
    except ConfigError as err:
        print(f"jobs/tune.py: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(main(["diffuse", *args]))
