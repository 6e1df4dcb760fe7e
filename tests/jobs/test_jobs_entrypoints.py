"""jobs/*.py are thin wrappers of `s2gr COMMAND`, and jobs/README.md's commands name real jobs, presets and keys."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from s2gr_ray.cli import COMMANDS
from s2gr_ray.cluster import JOB_EXCLUDES
from s2gr_ray.config import valid_keys

REPO = Path(__file__).resolve().parents[2]
JOBS = sorted(p.stem for p in (REPO / "jobs").glob("*.py") if not p.stem.startswith("_"))
README = (REPO / "jobs" / "README.md").read_text()


def test_one_job_per_main_command():
    assert set(JOBS) == {"prepare", "embed", "tokenize", "train", "run", "tune"}
    assert set(JOBS) - {"tune"} <= set(COMMANDS)


@pytest.mark.parametrize("job", JOBS)
def test_job_is_the_cli_subcommand(job, tmp_path):
    """`python jobs/X.py --help` is `s2gr X --help`, from any directory."""
    done = subprocess.run([sys.executable, str(REPO / "jobs" / f"{job}.py"), "--help"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"usage: s2gr {job} " in done.stdout


def test_jobs_dir_does_not_shadow_the_standard_library():
    """`python jobs/X.py` puts jobs/ first on sys.path; jobs/tokenize.py must not replace the standard library's
    tokenize (inspect imports it: numpy.ma failed that way inside a job)."""
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import _job, inspect, "
                            "tokenize; assert tokenize.__file__.startswith(inspect.__file__.rsplit('/', 1)[0]), "
                            "tokenize.__file__", str(REPO / "jobs")], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr


def test_a_bad_override_exits_2_with_the_hint(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "prepare.py"), "train.lrr=1", "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "did you mean 'train.lr'" in done.stderr


def _commands() -> list[list[str]]:
    """Every `ray job submit ... -- python jobs/X.py ...` command of jobs/README.md, as argv."""
    blocks = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    text = "\n".join(blocks).replace("\\\n", " ")
    lines = [re.sub(r"\s#.*$", "", ln) for ln in text.splitlines()]
    return [shlex.split(ln) for ln in lines if "ray job submit" in ln]


def test_readme_commands_are_valid():
    commands = _commands()
    assert len(commands) >= 7
    keys = set(valid_keys())
    for argv in commands:
        env = json.loads(argv[argv.index("--runtime-env-json") + 1])
        assert env["excludes"] == list(JOB_EXCLUDES)
        for pin in env.get("pip", []):
            assert f'"{pin}"' in (REPO / "pyproject.toml").read_text(), pin
        job_args = argv[argv.index("--") + 1:]
        assert job_args[0] == "python" and Path(job_args[1]).stem in JOBS, job_args
        assert (REPO / job_args[2]).exists(), job_args[2]  # the preset or search space
        overrides = [a.split("=", 1)[0] for a in job_args[3:] if "=" in a and not a.startswith("-")]
        assert set(overrides) <= keys, set(overrides) - keys
        assert "--out" in job_args and job_args[job_args.index("--out") + 1].startswith(("/", "$PWD/"))


def test_relative_outputs_inside_a_submitted_job_are_refused(tmp_path):
    """Inside `ray job submit --working-dir`, a relative --out would land in Ray's temporary copy of the folder."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("jobs_job", REPO / "jobs" / "_job.py")
    _job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(_job)
    in_job = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}})}
    copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_x"  # Ray's unpacked copy
    copy.mkdir(parents=True)
    args = ["configs/quickstart.yaml", "--out", "runs/x", "train.storage_path=ckpt", "data.path=data/x"]
    assert _job.lost_outputs(args, in_job, copy) == ["--out runs/x", "train.storage_path ckpt"]
    assert _job.lost_outputs(["--out=/mnt/shared/x", "train.storage_path=s3://b/ckpt"], in_job, copy) == []
    assert _job.lost_outputs(args, {}, copy) == []  # not a job: relative paths are the user's working folder
    no_dir = {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": {"pip": ["x"]}})}
    assert _job.lost_outputs(args, no_dir, copy) == []  # a job without --working-dir runs where it was started
    assert _job.lost_outputs(args, in_job, tmp_path) == []  # the entry point cd'ed to storage of its own
    (copy / "mine.yaml").write_text("base: quickstart.yaml\ntrain:\n  storage_path: ckpt\n")
    (copy / "quickstart.yaml").write_text((REPO / "configs" / "quickstart.yaml").read_text())
    assert _job.lost_outputs(["mine.yaml", "--out", "/mnt/x"], in_job, copy) == [
        "train.storage_path ckpt (in mine.yaml)"]  # the preset, loaded with its base: chain
    assert _job.lost_outputs(["mine.yaml", "--out", "/mnt/x", "train.storage_path=/mnt/c"], in_job, copy) == []
    env = {**os.environ, **in_job}
    done = subprocess.run([sys.executable, str(REPO / "jobs" / "prepare.py"), "configs/quickstart.yaml", "--out",
                           "runs/x"], capture_output=True, text=True, timeout=60, cwd=copy, env=env)
    assert done.returncode == 2 and "--out runs/x is relative" in done.stderr and not (copy / "runs").exists()
