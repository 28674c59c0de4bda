"""Networks: classifiers, generators, saliency and the pyfunc serving model."""
