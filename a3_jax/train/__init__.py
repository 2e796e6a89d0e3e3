"""Training: the run's configuration (config), train state and optimizer (state), the
jitted step (step), resume, validation, signals, what a run prints (console), and the
loop (loop.run: what a3-train calls)."""
