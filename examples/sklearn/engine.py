"""A scikit-learn model served by rs4py: the Engine each worker process runs, and its training.

    python engine.py train DIR    # fits the model on the iris data shipped inside
                                  # scikit-learn, writes DIR/iris.joblib and DIR/rows.txt

The Engine answers general tasks (``Driver::submit_call``): ``run(rows=[...])`` with the
features as a flat list of floats, or ``run(packed=b"...")`` with the same floats packed as
little-endian f64 (read with ``np.frombuffer``, no conversion per number). Either way it
answers plain Python values, never numpy ones: an answer is unpickled in the service's own
process (which would then import numpy) and rs4py converts lists, not arrays.
"""

from __future__ import annotations

import os
import sys

# numpy, scikit-learn and joblib are imported at the top, not in initialize: preloading this
# module (DriverOptions::preload) then saves every worker the import.
import joblib
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

MODEL_FILE = "iris.joblib"
ROWS_FILE = "rows.txt"


class IrisEngine:
    """A logistic regression on the iris data, loaded from ``model_path``."""

    def initialize(self, config, float_feature_names, str_feature_names, model_path, **extra):
        self.model = joblib.load(model_path)
        self.n_features = len(float_feature_names)
        if self.n_features != self.model.n_features_in_:
            raise ValueError(f"the model takes {self.model.n_features_in_} features, got names for {self.n_features}")
        self.class_names = [str(name) for name in config["class_names"]]

    def run(self, rows=None, packed=None):
        """``(labels, class names, probabilities)`` for each row: ``list[int]``, ``list[str]``
        and the probabilities of every class for every row, flattened (``list[float]``)."""
        if packed is not None:
            features = np.frombuffer(packed, dtype="<f8").reshape(-1, self.n_features)
        else:
            features = np.asarray(rows, dtype=np.float64).reshape(-1, self.n_features)
        labels = self.model.predict(features)
        probabilities = self.model.predict_proba(features)
        return labels.tolist(), [self.class_names[label] for label in labels], probabilities.ravel().tolist()


def train(directory: str) -> None:
    """Fits the model and writes it with the data's rows (one per line, ``repr`` of each
    float, which reads back as the same f64) and, first, a header line: the feature names
    and the class names, separated by tabs and ``|``."""
    iris = load_iris()
    model = LogisticRegression(max_iter=1000, random_state=0).fit(iris.data, iris.target)
    os.makedirs(directory, exist_ok=True)
    joblib.dump(model, os.path.join(directory, MODEL_FILE))
    with open(os.path.join(directory, ROWS_FILE), "w") as out:
        out.write("\t".join(iris.feature_names) + "|" + "\t".join(iris.target_names) + "\n")
        for row in iris.data:
            out.write(" ".join(repr(float(x)) for x in row) + "\n")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "train":
        sys.exit(f"usage: {sys.argv[0]} train DIR")
    train(sys.argv[2])
