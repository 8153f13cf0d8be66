"""`ray job submit` entrypoint for stage 1 alone (privacy encoding): the flags of `tdpdm encode`.

    ray job submit --address http://HEAD:8265 --working-dir . \
        --runtime-env jobs/runtime_env.yaml -- \
        python jobs/stage1.py --config configs/main.yaml --out s3://bucket/runs/enc1 \
        --ledger s3://bucket/ledger.json --epsilon 4

It writes the DP autoencoder to --out/release/models/, the latents (release/ in `released` mode,
custodian/ in `private` mode) and custodian/stage1.json (the events it spent), for
`jobs/tune.py` (or `tdpdm diffuse --from`). Copy only release/ out of the custodian's storage.
In `private` mode stage 1 here is calibrated to the whole
--epsilon; the stage-2 job then states the larger target of both stages together.
"""

from __future__ import annotations

import sys

from tdpdm.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["encode", *sys.argv[1:]]))
