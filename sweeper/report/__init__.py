"""Reading a sweep: the collected study data, the HTML report, the MLflow UI."""
