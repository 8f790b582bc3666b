"""`RestartPolicy`: how long `dynamo serve` waits before restarting a worker, and when it gives up."""

from __future__ import annotations

import signal

from dynamo_core.runtime.restart_policy import RestartPolicy, describe_exit


def test_a_worker_killed_by_a_signal_at_start_backs_off_and_is_given_up_on():
    policy = RestartPolicy()
    delays = []
    for _ in range(3):
        policy.on_start()
        delays.append(policy.on_exit(-signal.SIGKILL))
    assert delays == [0.5, 1.0, None]
    assert policy.quick_deaths == 3


def test_signal_and_error_deaths_at_start_count_in_one_row():
    policy = RestartPolicy()
    assert policy.on_exit(1) == 0.5
    assert policy.on_exit(-signal.SIGSEGV) == 1.0
    assert policy.on_exit(2) is None


def test_a_worker_that_ran_past_the_window_starts_a_new_row():
    policy = RestartPolicy(startup_window_s=0.0)
    for _ in range(5):
        assert policy.on_exit(-signal.SIGKILL) == 0.5
    assert policy.quick_deaths == 0


def test_a_clean_exit_is_not_a_quick_death():
    policy = RestartPolicy()
    assert policy.on_exit(1) == 0.5
    assert policy.on_exit(0) == 0.5
    assert policy.quick_deaths == 0


def test_exits_are_described_in_words():
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(-200) == "was killed by signal 200"
