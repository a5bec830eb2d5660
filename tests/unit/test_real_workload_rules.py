"""The pure rules behind issue 10's fixes: classification, storable text, leftover choice."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from producer import InvalidRequest
from producer.client import parse_request
from schemas import ExecutionResult, ExecutionStatus
from schemas.text import utf8_problem
from worker.executor.classify import Ending, StopRequests, classify
from worker.executor.leftover import find_leftover, skipping

CANCELLED, TIMED_OUT = ExecutionStatus.CANCELLED, ExecutionStatus.TIMED_OUT


@pytest.mark.parametrize(
    ("ending", "status", "oom_killed", "oom_kills"),
    [
        (Ending(0), ExecutionStatus.SUCCEEDED, False, 0),
        (Ending(0, oom_flag=True, oom_events=2), ExecutionStatus.SUCCEEDED, False, 2),  # a child was killed
        (Ending(0, oom_flag=True), ExecutionStatus.SUCCEEDED, False, 1),  # the event was lost, the flag not
        (Ending(3, oom_events=1), ExecutionStatus.FAILED, False, 1),
        (Ending(137, oom_events=1), ExecutionStatus.FAILED, True, 1),  # the main process, by the OOM killer
        (Ending(137), ExecutionStatus.FAILED, False, 0),  # exit 137 alone is not OOM
        (Ending(143, stop_reason=CANCELLED, stop_ended_it=True), CANCELLED, False, 0),
        (Ending(137, oom_events=1, stop_reason=TIMED_OUT, stop_ended_it=True), TIMED_OUT, False, 1),
        (Ending(0, stop_reason=CANCELLED, stop_ended_it=False), ExecutionStatus.SUCCEEDED, False, 0),  # late cancel
        (Ending(2, stop_reason=TIMED_OUT, stop_ended_it=False), ExecutionStatus.FAILED, False, 0),
        (Ending(0, stop_reason=CANCELLED, stop_ended_it=None), CANCELLED, False, 0),  # unknown: the stop counts
    ],
)
def test_classify(ending, status, oom_killed, oom_kills):
    verdict = classify(ending)
    assert (verdict.status, verdict.oom_killed, verdict.oom_kills) == (status, oom_killed, oom_kills)


def test_stop_requests_answers():
    assert StopRequests().ended_it(1) is None
    stops = StopRequests()
    stops.send(lambda: False)
    stops.send(lambda: False)
    assert stops.ended_it(5) is False
    stops.send(lambda: True)
    assert stops.ended_it(5) is True
    failed = StopRequests()
    failed.send(lambda: None)
    assert failed.ended_it(5) is None


def test_ended_it_waits_for_a_stop_whose_thread_has_not_begun(monkeypatch):
    """A loaded machine starts the stop's thread late; the supervisor asking meanwhile must wait
    for the answer, not fail (it ended a late cancel of a succeeded container as error)."""
    import worker.executor.classify as classify_module
    from worker.executor.threads import ThreadReuse

    monkeypatch.setattr(classify_module, "REUSE", ThreadReuse(), raising=False)  # no idle thread to reuse
    real_start, late = threading.Thread.start, []

    def late_start(thread):
        if thread.name != "dockrq-stop":
            return real_start(thread)
        late.append(thread)  # begun below, once ended_it waits

    monkeypatch.setattr(threading.Thread, "start", late_start)
    stops = StopRequests()
    stops.send(lambda: False)
    answer: dict[str, object] = {}

    def ask() -> None:
        try:
            answer["ended_it"] = stops.ended_it(5)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assert
            answer["ended_it"] = exc

    asking = threading.Thread(target=ask, name="asking")
    asking.start()
    asking.join(0.2)
    assert asking.is_alive() and late, "ended_it answered before the stop ran"
    real_start(late[0])
    asking.join(5)
    assert answer == {"ended_it": False}


def test_result_without_oom_kills_reads_as_zero():
    # outcomes written before the field existed
    result = ExecutionResult.model_validate({"execution_id": "x", "status": "succeeded", "oom_killed": False})
    assert result.oom_kills == 0


# -- storable text --------------------------------------------------------------------------


def test_utf8_problem_names_the_byte():
    assert utf8_problem("café ☃") is None
    assert utf8_problem("caf\udce9") == (
        "not valid UTF-8 (byte 0xe9 at character 3); only UTF-8 text can be stored"
    )
    assert "lone surrogate U+D800" in utf8_problem("\ud800")


@given(st.text())
def test_every_encodable_text_is_storable(text):
    assert utf8_problem(text) is None


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        ({"engine": {"image": "x", "cmd": ["a", "\udce9"]}}, "engine.cmd.1"),
        ({"engine": {"image": "x", "working_dir": "/\udce9"}}, "engine.working_dir"),
        ({"engine": {"image": "x", "env": {"A": "\udce9"}}}, "engine.env.A"),
        ({"engine": {"image": "x", "env": {"\udce9": "v"}}}, "engine.env.\\udce9"),
        ('{"engine": {"image": "x", "cmd": ["\\udce9"]}}', "engine.cmd.0"),  # JSON escapes from another language
    ],
)
def test_unstorable_text_is_refused_naming_the_field(request_, named):
    with pytest.raises(InvalidRequest) as refused:
        parse_request(request_)
    assert str(refused.value).startswith(f"{named}: not valid UTF-8")
    str(refused.value).encode("utf-8")  # the message itself can be printed and stored


# -- leftovers ------------------------------------------------------------------------------


class _Api:
    """``APIClient.containers`` over a fixed listing, filtered by label as the daemon does."""

    def __init__(self, containers):
        self.containers = containers
        self.asked = None

    def __call__(self, all=False, filters=None):  # noqa: A002 - docker-py's argument name
        self.asked = filters
        wanted = dict(f.split("=", 1) for f in filters["label"])
        return [c for c in self.containers if all and wanted.items() <= c["Labels"].items()]


class _Listing:
    def __init__(self, containers):
        self.api = type("Api", (), {})()
        self.api.containers = _Api(containers)


def _c(cid, state, created, executor="n"):
    labels = {"dockrq.executor": executor, "dockrq.execution": "e"}
    return {"Id": cid, "State": state, "Created": created, "Labels": labels}


def test_the_leftover_followed_is_the_running_one_then_the_newest():
    labels = {"dockrq.executor": "n", "dockrq.execution": "e", "dockrq.created": "1"}
    client = _Listing([
        _c("old-exited", "exited", 1),
        _c("runs", "running", 0),
        _c("new-exited", "exited", 2),
        _c("going", "removing", 3),
        _c("other-node", "running", 4, executor="m"),
    ])
    assert find_leftover(client, labels).id == "runs"
    # by labels (owned_containers, the executor's one listing), never by name
    assert client.api.containers.asked == {"label": ["dockrq.execution=e"]}
    listed = client.api.containers.containers
    client.api.containers.containers = listed[:1] + listed[2:]
    assert find_leftover(client, labels).id == "new-exited"
    client.api.containers.containers = [_c("going", "removing", 0), _c("other-node", "running", 4, executor="m")]
    assert find_leftover(client, labels) is None


def test_skipping_drops_what_the_attach_already_delivered_per_stream():
    frames = [("stdout", b"abc"), ("stderr", b"xy"), ("stdout", b"def"), ("stderr", b"z")]
    assert list(skipping(iter(frames), {"stdout": 4, "stderr": 2})) == [("stdout", b"ef"), ("stderr", b"z")]


def test_a_result_without_outputs_leaves_the_output_fields_out_of_its_json():
    """About 130 bytes of every retained outcome; a reader gets the same defaults back."""
    plain = ExecutionResult(execution_id="x", status=ExecutionStatus.SUCCEEDED, exit_code=0, stdout="hi\n")
    wire = json.loads(plain.model_dump_json())
    assert not [k for k in wire if k.startswith("output")] and wire["stdout"] == "hi\n"
    assert ExecutionResult.model_validate(wire) == plain
    missing = plain.model_copy(update={"outputs_missing": ["/out"], "output_files_limit_bytes": 1024})
    wire = json.loads(missing.model_dump_json())
    assert wire["outputs_missing"] == ["/out"] and wire["output_files"] == [] and wire["outputs_truncated"] is False
    assert ExecutionResult.model_validate(wire) == missing
