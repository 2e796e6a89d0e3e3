"""Test setup: 8 simulated CPU devices, a persistent compile cache, hypothesis settings."""

import os

import hypothesis

# The suite runs on CPU devices even where an accelerator plugin is installed (the
# [tpu-aot] / [gpu-aot] extras only compile for their targets: tests/test_aot.py).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(__file__), "..", ".jax_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# Property tests draw their examples deterministically (the same ones on every CI
# run) and have no deadline: a first example may include a JAX compile. Each test
# sets its own small max_examples. HYPOTHESIS_PROFILE=explore draws fresh ones.
hypothesis.settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow,
                           hypothesis.HealthCheck.function_scoped_fixture])
hypothesis.settings.register_profile("explore", parent=hypothesis.settings.get_profile("ci"),
                                     derandomize=False)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
  """The slow tests first: one run of the whole suite over two processes (pytest -n 2
  --dist=loadfile) then hands out their files while both are idle, and the files of
  short tests fill in at the end."""
  del config
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
