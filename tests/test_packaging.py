"""The installed package: a wheel built from the checkout, installed into a fresh virtual
environment, trains from any directory."""

import os
import site
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = """
import os, sys
import ernie3_jax
assert ernie3_jax.__file__.startswith(sys.argv[1]), ernie3_jax.__file__
from ernie3_jax.config import gin_utils
import gin
for name in ("gin_configs/experiments/demo.gin", "experiments/finetune_demo.gin"):
  gin_utils.parse_gin([name])  # the checkout's spelling and the short one
  assert gin.query_parameter("Ernie3Config.d_model") > 0
import seqio
import ernie3_jax.tasks  # registers every task and mixture
assert "knowledge_study_uktp" in seqio.MixtureRegistry.names()
print("installed ok")
"""


@pytest.mark.slow  # builds a wheel (about half a minute)
def test_a_wheel_carries_its_gin_files_and_tasks_inside_the_package(tmp_path):
  dist = tmp_path / "dist"
  # Built as `make install` builds (in an isolated environment with a current
  # setuptools): every package is declared, so setuptools has nothing to warn about (a
  # newcomer's `make install` used to print some 200 lines of warnings).
  built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-v",
                          "-w", str(dist), REPO], cwd=tmp_path,
                         capture_output=True, text=True, check=True)
  assert not [l for l in built.stdout.splitlines() + built.stderr.splitlines()
              if "Warning" in l or l.strip() == "!!"], built.stderr[-3000:]
  (wheel,) = dist.glob("ernie3_jax-*.whl")
  with zipfile.ZipFile(wheel) as z:
    names = z.namelist()
    z.extractall(tmp_path / "site")
  assert not [n for n in names if n.split("/")[0] in ("tasks", "gin_configs")], names
  for name in ("ernie3_jax/tasks/__init__.py", "ernie3_jax/gin_configs/models/tiny.gin",
               "ernie3_jax/gin_configs/experiments/demo.gin",
               "ernie3_jax/gin_configs/runs/pretrain.gin"):
    assert name in names
  # From another directory, with the unpacked wheel first on the path (before the
  # editable install of the checkout).
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  site = str(tmp_path / "site")
  env = dict(os.environ, PYTHONPATH=site)
  out = subprocess.run([sys.executable, "-c", CHECK, site], cwd=elsewhere, env=env,
                       capture_output=True, text=True, check=False)
  assert out.returncode == 0 and "installed ok" in out.stdout, out.stderr[-3000:]


@pytest.mark.slow  # a fresh venv, a wheel install and two demo steps: about two minutes
def test_the_installed_wheel_trains_two_demo_steps_from_another_directory(tmp_path):
  dist = tmp_path / "dist"
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                  "--no-build-isolation", "-w", str(dist), REPO], check=True, cwd=tmp_path)
  (wheel,) = dist.glob("ernie3_jax-*.whl")
  venv = tmp_path / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  python = str(venv / "bin" / "python")
  # The dependencies come from this environment's site-packages (no download here); the
  # package itself only from the wheel (a .pth line adds a directory but runs none of its
  # .pth files, so the checkout's editable install stays out).
  venv_site = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"],
                             check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(venv_site, "dependencies.pth"), "w") as f:
    f.write("\n".join(site.getsitepackages()) + "\n")
  subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                  str(wheel)], check=True)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
  out = subprocess.run(
      [python, "-m", "ernie3_jax.cli.main", "--gin_file=gin_configs/experiments/demo.gin",
       f"--gin.MODEL_DIR='{tmp_path / 'run'}'", "--gin.train.num_steps=2",
       "--gin.train.log_every=1", "--gin.train.progress_bar=False"],
      cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert "step 2:" in out.stdout
  located = subprocess.run([python, "-c", "import ernie3_jax; print(ernie3_jax.__file__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
  assert located.stdout.strip().startswith(venv_site)
  assert (tmp_path / "run" / "config.gin").read_text().count("import ernie3_jax.tasks") == 1
