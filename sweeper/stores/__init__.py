"""Where a sweep's state lives: paths, the Optuna storage and its proxy, MLflow tracking, and
the retries that wait out a store that is down."""
