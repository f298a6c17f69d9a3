"""The Dockerfile's steps, run without a container engine (none runs on these machines):
scripts/container-check.sh copies what the image copies, runs the Dockerfile's own
`uv sync` line in a clean directory, and runs the installed CLI as an unprivileged user."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_dockerfile_is_multi_stage_non_root_and_execs_the_gateway():
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2
    assert re.search(r"^RUN uv sync .*--locked.*--no-dev", text, re.M)
    assert re.search(r"^USER ogelkit$", text, re.M)
    # the build stage has what building ogelkit-native needs (the runtime stage does not)
    build = text.split("\nFROM ", 2)[1]
    assert "rustup" in build and "build-essential" in build
    assert 'ENTRYPOINT ["ogelkit", "run"]' in text  # exec form: ogelkit is PID 1
    assert "/readyz" in text.split("HEALTHCHECK", 1)[1]


def test_the_image_steps_install_a_working_gateway():
    # The script makes its own world-readable directory: the image's user is unprivileged,
    # and pytest's tmp_path lives under a root-only directory.
    result = subprocess.run(["bash", str(ROOT / "scripts" / "container-check.sh")],
                            capture_output=True, text=True, timeout=600)
    work = re.search(r"image steps ran in (\S+)", result.stdout)
    if work:
        shutil.rmtree(work.group(1), ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "examples/railway.toml: ok" in result.stdout
    for kind in ("backend:postgres", "backend:redis", "backend:mongodb"):
        assert kind in result.stdout, result.stdout
