"""The operator CLI, run as the installed console script against a real database."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


@pytest.fixture
def owner(cli_env: dict[str, str]) -> str:
    run_cli(
        "accounts",
        "create",
        "owner@example.com",
        "--password-stdin",
        env=cli_env,
        stdin="long enough password\n",
    )
    return "owner@example.com"


def test_camera_lifecycle_with_readiness(cli_env: dict[str, str], owner: str) -> None:
    added = json.loads(
        run_cli(
            "cameras",
            "add",
            "--owner",
            owner,
            "--name",
            "Porch",
            "--room",
            "Entrance",
            "--encryption",
            "on",
            "--json",
            env=cli_env,
        ).stdout
    )
    assert added["readiness"]["alexa"]["ready"] is False
    assert [b["code"] for b in added["readiness"]["google"]["blockers"]] == ["ENCRYPTION_ON"]

    changed = json.loads(
        run_cli(
            "cameras",
            "set",
            added["id"],
            "--encryption",
            "off",
            "--audio",
            "off",
            "--json",
            env=cli_env,
        ).stdout
    )
    assert changed["readiness"]["alexa"] == {"ready": True, "blockers": []}
    assert [b["code"] for b in changed["readiness"]["google"]["blockers"]] == ["AUDIO_OFF"]

    listed = json.loads(run_cli("cameras", "list", "--owner", owner, "--json", env=cli_env).stdout)
    assert [(c["id"], c["image_encryption"], c["audio"]) for c in listed] == [
        (added["id"], False, False)
    ]
    run_cli("cameras", "remove", added["id"], env=cli_env)
    assert json.loads(run_cli("cameras", "list", "--json", env=cli_env).stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cameras", "set", "cam_doesnotexist", "--audio", "on"], "no camera cam_doesnotexist"),
        (["cameras", "remove", "cam_doesnotexist"], "no camera cam_doesnotexist"),
        (["cameras", "add", "--owner", "ghost@example.com", "--name", "X"], "no account"),
        (
            [
                "cameras",
                "add",
                "--owner",
                "owner@example.com",
                "--name",
                "X",
                "--source",
                "ftp://cam",
            ],
            "rtsp",
        ),
        (["cameras", "list", "--owner", "ghost@example.com"], "no account"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    cli_env: dict[str, str], owner: str, args: list[str], message: str
) -> None:
    result = run_cli(*args, env=cli_env, check=False)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_duplicate_account_and_short_password_exit_2(cli_env: dict[str, str], owner: str) -> None:
    dup = run_cli(
        "accounts",
        "create",
        owner,
        "--password-stdin",
        env=cli_env,
        stdin="another password\n",
        check=False,
    )
    assert (dup.returncode, dup.stderr.strip()) == (
        2,
        f"error: an account for {owner} already exists",
    )
    short = run_cli(
        "accounts",
        "create",
        "new@example.com",
        "--password-stdin",
        env=cli_env,
        stdin="short\n",
        check=False,
    )
    assert short.returncode == 2
    assert "at least 8" in short.stderr


def test_serve_refuses_an_unmigrated_database(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {"CAMVOICE_DATA_DIR": str(tmp_path)}
    result = run_cli("serve", "--port", "1", env=env, check=False)
    assert result.returncode == 2
    assert "camvoice db upgrade" in result.stderr
    run_cli("db", "upgrade", env=env)
    listed = run_cli("cameras", "list", "--json", env=env)
    assert json.loads(listed.stdout) == []
