"""MLflow's model registry REST API (``/api/2.0/mlflow/...``) on modelreg's commands and views."""
