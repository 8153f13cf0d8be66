"""`ray job submit` entrypoint for the whole pipeline: the same flags as `tdpdm run`.

    ray job submit --address http://HEAD:8265 --working-dir . -- \
        python jobs/pipeline.py --config configs/main.yaml --out runs/r1 --metrics-port 9400

--out gets release/ (exactly what the guarantee covers: publish this) and custodian/ (metrics read
from real data, private latents, checkpoints: never publish). The job's driver runs the pipeline in
its own process and `--metrics-port` exposes its metrics
for Prometheus. Spreading stage 1 over a Ray Train worker group is the distributed layer's job.
"""

from __future__ import annotations

import sys

from tdpdm.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["run", *sys.argv[1:]]))
