"""The Ray job a generations or scores step submits: `python -m factory.engines.ray_job SPEC.json`.

It connects to the cluster it runs on (Ray's job supervisor sets RAY_ADDRESS), runs the spec with
factory.engines.ray_data, and reports the summary back to the Dagster step through Dagster Pipes
(`dagster-pipes`, the dependency-free half of the protocol; no Dagster in the job). Run by hand
(no Pipes context), it prints the summary as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from factory.engines.ray_data import run_spec


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m factory.engines.ray_job SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    import ray
    import ray.data
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    ray.init(log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False  # the job's log is the Pipes channel
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        print(json.dumps(run_spec(spec), sort_keys=True))
        return 0
    with open_dagster_pipes() as pipes:
        pipes.log.info(f"ray job: {spec['stage']} on {ray.cluster_resources().get('CPU', 0):g} CPUs")
        summary = run_spec(spec)
        pipes.report_custom_message(summary)  # the step writes the table itself: no materialization here
    return 0


if __name__ == "__main__":
    sys.exit(main())
