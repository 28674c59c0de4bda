"""MLflow glue: run helpers, lineage, artifact names, figures."""
