"""The units of work (bench/units): both kinds answer the executors through the same names, and a
kind named in a request turns back into its unit."""
from __future__ import annotations

import json
import types

import pytest

from bench.executors.trial_process import failure_record
from bench.trial import Trial
from bench.units import UNIT_KINDS, unit_from_dict
from bench.units.session import Session

BASE = Trial(workload="digits_mlp", regularizers=(), precision="float32", batch_size=64, cpu_threads=1,
             accelerator_type="H100", device="cpu")
UNITS = (BASE, Session(base=BASE, settings=((("l2", {"l2": 1e-4}),),)))


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.kind)
def test_a_unit_round_trips_through_its_kind_and_fails_under_its_own_id(unit):
    """Defect caught: a request's unit rebuilt as the other kind, or an executor's failure record
    filed under an id or kind the unit does not have."""
    assert UNIT_KINDS[unit.kind] is type(unit)
    back = unit_from_dict(unit.kind, json.loads(json.dumps(unit.to_dict())))
    assert type(back) is type(unit) and back == unit and back.unit_id == unit.unit_id
    assert (back.backend, back.cpu_threads, back.device, back.accelerator_type) == ("tensorflow", 1, "cpu", "H100")
    record = failure_record(unit, "timeout: killed", gpu=False, executor="process")
    assert record["status"] == "failed" and record["reason"] == "timeout: killed"
    assert record[f"{unit.kind}_id"] == unit.unit_id and record["node"]["cpu_threads"] == 1


def test_only_a_session_takes_a_cpu_node_of_its_own_unless_the_suite_says_slot():
    """Defect caught: sessions timed beside a neighbour, or trials kept one per node."""
    suite = lambda isolation, paired: types.SimpleNamespace(isolation=isolation, paired_isolation=paired)  # noqa: E731
    assert [Trial.whole_cpu_node(suite(i, "node")) for i in ("cpu", "node")] == [False, True]
    assert [Session.whole_cpu_node(suite("cpu", p)) for p in ("node", "slot")] == [True, False]
    assert Session.whole_cpu_node(suite("node", "slot"))


def test_an_unknown_kind_is_named():
    with pytest.raises(ValueError, match="unknown unit kind 'sweep'"):
        unit_from_dict("sweep", {})
