"""What the launcher hands Ray Train's controller from the job: how often it polls its workers
(hardware.poll_interval_s), through the variable Ray passes from the process calling fit."""

from __future__ import annotations

from orchestrator.compose.load import compose
from orchestrator.launch.supervise import POLL_INTERVAL_ENV, controller_env


def test_the_local_block_polls_often_and_the_gpu_blocks_keep_rays_default():
    assert compose("vicuna", "local").hardware.poll_interval_s == 0.25
    assert compose("vicuna", "full").hardware.poll_interval_s == 2.0


def test_the_interval_is_set_while_the_controller_starts_and_removed_after():
    cfg = compose("vicuna", "local")
    env: dict[str, str] = {}
    with controller_env(cfg, env):
        assert env[POLL_INTERVAL_ENV] == "0.25"
    assert POLL_INTERVAL_ENV not in env


def test_a_value_the_user_set_wins_and_stays():
    cfg = compose("vicuna", "local")
    env = {POLL_INTERVAL_ENV: "1.5"}
    with controller_env(cfg, env):
        assert env[POLL_INTERVAL_ENV] == "1.5"
    assert env == {POLL_INTERVAL_ENV: "1.5"}


def test_ray_still_passes_the_variable_to_its_controller():
    # Ray Train copies these from the driver's environment into the controller actor's; if a
    # Ray upgrade drops or renames it, the setting would silently do nothing.
    from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE

    assert POLL_INTERVAL_ENV in ENV_VARS_TO_PROPAGATE
