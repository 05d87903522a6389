"""A scikit-learn model served by rs4py: the Engine each worker process runs, and its training.

    python engine.py train DIR    # fits the model on the iris data shipped inside
                                  # scikit-learn, writes DIR/iris.joblib and DIR/rows.txt

The Engine answers general tasks (``Driver::submit_call``) in two forms:

* ``run(rows=[...])``, the features as a flat list of floats: it answers
  ``(labels, probabilities)`` as a list of ints and a flat list of floats;
* ``run(packed=b"...")``, the same floats packed as little-endian f64 and read with
  ``np.frombuffer`` (no Python object per number): it answers the same two arrays as bytes
  (little-endian i64 and f64).

With batching (``DriverOptions::batching``) the worker hands the Engine a whole batch of
requests at once: ``run_batch(calls)`` stacks every request's rows into one matrix, predicts it
with one ``predict`` and one ``predict_proba``, and splits the answers back per request, each
in its request's form; a request whose rows do not fit the model fails alone.

Either way it answers plain Python values, never numpy ones: an answer is unpickled in the
service's own process (which would then import numpy) and rs4py converts lists and bytes,
not arrays.
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

    def features(self, rows=None, packed=None):
        """A request's rows as an (n, n_features) float64 matrix."""
        if packed is not None:
            return np.frombuffer(packed, dtype="<f8").reshape(-1, self.n_features)
        return np.asarray(rows, dtype=np.float64).reshape(-1, self.n_features)

    @staticmethod
    def answer(labels, probabilities, packed):
        """One request's answer, in the form it came in."""
        if packed:
            return labels.astype("<i8").tobytes(), probabilities.astype("<f8").tobytes()
        return labels.tolist(), probabilities.ravel().tolist()

    def run(self, rows=None, packed=None):
        """The predicted labels and every class's probability for each row (flattened)."""
        features = self.features(rows, packed)
        return self.answer(self.model.predict(features), self.model.predict_proba(features), packed is not None)

    def run_batch(self, calls):
        """``run`` for each ``(args, kwargs)`` of ``calls``, with one prediction for all of
        their rows stacked; a request whose rows cannot be read answers its exception."""
        answers = [None] * len(calls)
        parts, taken = [], []
        for index, (args, kwargs) in enumerate(calls):
            try:
                parts.append(self.features(*args, **kwargs))
                taken.append((index, kwargs.get("packed") is not None))
            except Exception as exc:
                answers[index] = exc
        if parts:
            stacked = np.concatenate(parts) if len(parts) > 1 else parts[0]
            labels = self.model.predict(stacked)
            probabilities = self.model.predict_proba(stacked)
            at = 0
            for part, (index, packed) in zip(parts, taken):
                end = at + len(part)
                answers[index] = self.answer(labels[at:end], probabilities[at:end], packed)
                at = end
        return answers


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
        out.writelines(" ".join(repr(float(x)) for x in row) + "\n" for row in iris.data)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "train":
        sys.exit(f"usage: {sys.argv[0]} train DIR")
    train(sys.argv[2])
