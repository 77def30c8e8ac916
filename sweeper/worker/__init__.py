"""Inside a worker process: claim trials, train them as Optuna objectives, checkpoint, share a
GPU. Nothing here imports the launcher (sweep/) or a pool other than its interface."""
