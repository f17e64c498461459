"""Sweeps over delay, optimizer and hyperparameters: `spec` validates a sweep (no Ray needed), `tune` runs it on
Ray Tune."""
