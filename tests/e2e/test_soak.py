"""The soak: 100 short jobs on three nodes while one node after another is killed with SIGKILL.

Runs ``bench/soak.py``'s soak (see its docstring for the method) on the test's own farm: embedded
Redis, SQLite and folder storage under the test's data dir, three real ``farm-node`` processes
with lock 5 s and a stalled check every 3 s. About a minute on a 2-core machine.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
LOCK_S, STALLED_S = 5.0, 3.0


def load_soak():
    spec = importlib.util.spec_from_file_location("encodeflow_bench_soak", SOAK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.alone
@pytest.mark.timeout(900)
def test_every_job_completes_exactly_once_while_nodes_keep_dying(data_dir):
    soak = load_soak()
    opts = soak.SoakOptions(jobs=100, nodes=3, lock_seconds=LOCK_S, stalled_interval_seconds=STALLED_S, timeout=600)
    result = soak.run_soak(opts)
    (data_dir.parent / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k not in ("kill_log", "options")}, indent=1))

    assert result["rows_by_status"] == {"completed": 100}, "every job ends completed, none stuck active"
    assert result["jobs_with_wrong_outputs"] == {}, "each job has exactly one output, the one its row names"
    assert result["ffmpeg_left"] == [] and result["work_dirs_left"] == {}, "no FFmpeg, no temp file left"
    assert result["node_exit_codes"] == {"soak-1": 0, "soak-2": 0, "soak-3": 0}
    # The soak must have done what it says: killed nodes that were running jobs, many times.
    assert result["kills"] >= 5 and result["recoveries"] >= 3, result["kill_log"]
    assert result["jobs_stuck_after_a_kill"] == []
    assert result["recovery_s"]["max"] < LOCK_S + 2 * STALLED_S + 20, result["kill_log"]
    cut_short = {job for kill in result["kill_log"] for job in kill["recovery_s"]}
    for job, (logged, started) in result["runs_not_logged"].items():
        assert logged < started and job in cut_short, "the nodes' logs and BullMQ agree on the runs"
    # Every extra run follows a run cut short (its node stopped renewing the lock), and every run cut
    # short is explained: a kill (one job per node), or a run that lost its lock and threw its
    # result away.
    assert result["runs_beyond_first"] == result["runs_cut_short"]
    assert result["recoveries"] <= result["runs_cut_short"] <= result["kills"] + result["duplicate_results_discarded"]
