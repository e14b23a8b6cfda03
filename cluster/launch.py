"""Entry point: `python cluster/launch.py --config configs/debug.yaml [section.key=value ...]`.

Checks the whole configuration, the model path and the data before any Ray or vLLM process starts: a bad
input is one line on stderr and exit code 2. Then it joins the Ray cluster named by RAY_ADDRESS (as under
`ray job submit`) or starts a local one, and trains.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script (`python cluster/launch.py`, also under `ray job submit`): make the repo root importable.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from cluster.config import ConfigError, load_config  # noqa: E402

EXIT_BAD_INPUT = 2
EXIT_LEARNER_DIED = 3
EXIT_WEIGHT_SYNC = 4


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file under configs/")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=8 learner.lr=1e-5")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from cluster.data import DataError
    from cluster.model_source import ModelSourceError
    from cluster.run_dir import RunDirError

    try:
        cfg = load_config(args.config, args.overrides)
        from cluster.trainer import prepare_run

        run = prepare_run(cfg)
    except (ConfigError, DataError, ModelSourceError, RunDirError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from cluster.placement import WeightSyncError
    from cluster.trainer import train
    from learner.group import LearnerRankDiedError

    try:
        return train(run)
    except LearnerRankDiedError as err:
        latest = run.run_dir.latest_checkpoint()
        where = f"checkpoint step_{latest} is intact" if latest else "no checkpoint was written yet"
        print(f"error: {err}; {where}; continue with trainer.resume=true", file=sys.stderr)
        return EXIT_LEARNER_DIED
    except WeightSyncError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_WEIGHT_SYNC


if __name__ == "__main__":
    sys.exit(main())
