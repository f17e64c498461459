"""One training run: its config, data and models, the delay simulator, the epoch bookkeeping, and the
parameter server with its Ray actors. Imports abray.optim, nothing above it."""
