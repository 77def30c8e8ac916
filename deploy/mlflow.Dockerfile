# The MLflow server of docker-compose.yml: MLflow's image with the PostgreSQL driver built in
# (the image has none, mlflow/mlflow#9513), so no container start installs anything. The tag
# follows the MLflow that sweeper runs with (its venv); tests/test_compose.py checks that.
FROM ghcr.io/mlflow/mlflow:v3.17.2

RUN pip install --no-cache-dir "psycopg[binary]==3.3.9"
