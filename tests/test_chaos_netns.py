"""The chaos benchmark, short (netns tier): three minutes of random faults of every kind on
the 8-box mesh (lab/chaoslab.py). Timings are the benchmark's business (bench/chaos.py,
BENCHMARKS.md); this asserts what must hold whatever the machine's speed."""

import pytest

from wg_netmanager.lab.chaoslab import run

pytestmark = pytest.mark.netns


def test_three_minutes_of_faults_leave_no_leak_no_stale_state_and_every_pair_pinging():
    result = run(minutes=3, period=15, quiet=20, seed=7)
    assert sum(result["faults"].values()) == 12
    assert result["cleartext_leaks"] == 0, result["cleartext_flows"]
    assert result["redirects"] == 0
    assert result["tracebacks"] == 0
    assert (result["stale_peers"], result["stale_routes"], result["missing_routes"]) == (0, 0, 0)
    # every fault is recovered from before the next one (a generous bound, not a figure)
    assert all(s < 12 for s in result["max_outage_s"].values()), result["max_outage_s"]
    assert result["quiet_max_outage_s"] < 2, result
    assert result["quiet_link_downs"] == 0, result["quiet_link_downs_by_node"]
