"""Progress lines: counts, percentages, an ETA from the rate so far, pacing."""

from a3_jax import progress


def test_reports_paced_with_an_eta(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
  lines = []
  p = progress.Progress("windows", lines.append, total=10, unit="windows", every=0.3)
  now[0] = 110.0
  p(0)  # restarts the clock: the time before (opening, compiling) is not the rate's
  for done in range(1, 11):
    now[0] += 2.0
    p(done)
  assert lines == ["windows: 3/10 windows (30%), 0m06s, ~0m14s left",
                   "windows: 6/10 windows (60%), 0m12s, ~0m08s left",
                   "windows: 9/10 windows (90%), 0m18s, ~0m02s left",
                   "windows: 10/10 windows (100%), 0m20s, done"]
  assert progress.clock(7630) == "127m10s"
