"""Models-from-code entry: MLflow runs this file to build the served classifier."""
import mlflow

from models.serving import ImageClassifier

mlflow.models.set_model(ImageClassifier())
