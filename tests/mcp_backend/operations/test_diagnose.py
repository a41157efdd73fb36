"""Pure parts of ``workload_diagnose``: selectors, replica summaries, container states, order."""

from __future__ import annotations

from mcp_backend.operations.diagnose import _event_time, container_states, replica_summary


def test_replica_summary_reports_only_unhealthy_conditions() -> None:
    deployment = {
        "spec": {"replicas": 3},
        "status": {
            "readyReplicas": 1,
            "conditions": [
                {
                    "type": "Available",
                    "status": "False",
                    "reason": "MinimumReplicasUnavailable",
                    "message": "not enough",
                },
                {"type": "Progressing", "status": "True"},
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": "quota",
                },
            ],
        },
    }
    summary = replica_summary("Deployment", deployment)
    assert summary["desired"] == 3
    assert summary["ready"] == 1
    assert summary["conditions"] == [
        "Available=False (MinimumReplicasUnavailable: not enough)",
        "ReplicaFailure=True (FailedCreate: quota)",
    ]


def test_container_states_show_reasons_exit_codes_and_last_termination() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                {
                    "name": "app",
                    "ready": False,
                    "restartCount": 4,
                    "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                    "lastState": {
                        "terminated": {"reason": "Error", "exitCode": 2, "finishedAt": "t"}
                    },
                }
            ]
        }
    }
    (state,) = container_states(pod)
    assert state["state"] == "waiting"
    assert state["reason"] == "CrashLoopBackOff"
    assert state["restarts"] == 4
    assert state["lastTermination"] == {"reason": "Error", "exitCode": 2, "finishedAt": "t"}


def test_events_sort_by_time_with_and_without_fractions() -> None:
    events = [
        {"lastTimestamp": "2026-01-01T10:00:05Z"},
        {"eventTime": "2026-01-01T10:00:04.500000Z"},
        {"lastTimestamp": "2026-01-01T10:00:04Z"},
    ]
    ordered = sorted(events, key=_event_time)
    assert [e.get("lastTimestamp") or e.get("eventTime") for e in ordered] == [
        "2026-01-01T10:00:04Z",
        "2026-01-01T10:00:04.500000Z",
        "2026-01-01T10:00:05Z",
    ]
