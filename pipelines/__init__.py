"""One module per MLflow entry point; `python -m pipelines --help` lists them."""
