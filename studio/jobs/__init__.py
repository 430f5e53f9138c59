"""A job's life: queued (create), run from claim to stored results (run, steps), resumed after a crash (recovery)."""
