"""chaos.invariants.failure_report: what a failed robot test prints, so that a failure seen
once in CI says what the server said and what the coordinator logged about it."""

from __future__ import annotations

from pathlib import Path

from chaos.fleet import Outcome, Robot
from chaos.invariants import REPORTED_LOG_LINES, failure_report


def robot_with(*outcomes: Outcome) -> Robot:
    robot = Robot([], period_s=0.02)
    robot.outcomes.extend(outcomes)
    return robot


def test_every_failed_attempt_is_a_line_with_what_the_server_said() -> None:
    robots = [
        robot_with(Outcome(1, 0.0, 0.01, "OK")),
        robot_with(
            Outcome(7, 0.0, 2.001, "DEADLINE_EXCEEDED", detail="Deadline Exceeded"),
            Outcome(7, 0.0, 0.2, "UNAVAILABLE", detail="session store unavailable"),
        ),
    ]
    assert failure_report(robots).splitlines() == [
        "robot 1 seq 7 DEADLINE_EXCEEDED after 2.001 s: Deadline Exceeded",
        "robot 1 seq 7 UNAVAILABLE after 0.200 s: session store unavailable",
    ]


def test_the_coordinators_last_lines_about_steps_are_quoted_only_after_a_failure(
    tmp_path: Path,
) -> None:
    log = tmp_path / "coordinator.log"
    quiet = '{"level": "INFO", "msg": "session opened"}'
    told = [
        f'{{"level": "WARNING", "msg": "stage 0 failed, the step degrades ({i})"}}'
        for i in range(40)
    ]
    refused = '{"level": "INFO", "msg": "step DEADLINE_EXCEEDED: queued for admission"}'
    log.write_text("\n".join([quiet, *told, refused]) + "\n")
    (tmp_path / "shard-0-r0.log").write_text('{"level": "ERROR", "msg": "not a coordinator"}\n')

    assert failure_report([robot_with(Outcome(1, 0.0, 0.01, "OK"))], tmp_path) == ""
    lines = failure_report([robot_with(Outcome(3, 0.0, 0.5, "UNAVAILABLE"))], tmp_path).splitlines()
    assert lines[:2] == [
        "robot 0 seq 3 UNAVAILABLE after 0.500 s: ",
        f"coordinator.log, last {REPORTED_LOG_LINES} of 41 lines about steps:",
    ]
    assert lines[2:] == [*told, refused][-REPORTED_LOG_LINES:]
