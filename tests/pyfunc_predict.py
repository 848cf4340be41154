"""A model's answers through MLflow's own pyfunc, in a process of its own (nothing of the training process's state).

usage: python pyfunc_predict.py TRACKING_URI MODEL_URI JSON
JSON: {"list": [...]} (one string per example) or {"frame": {column: [...]}} (a DataFrame). Prints the answers
as a JSON list of strings, the model's signature input names on a second line, and on a third the number of
rows of its input example and of the answers to it.
"""

from __future__ import annotations

import json
import sys

import mlflow.pyfunc
import pandas as pd

uri, model_uri, given = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
mlflow.set_tracking_uri(uri)
model = mlflow.pyfunc.load_model(model_uri)
answers = model.predict(pd.DataFrame(given["frame"]) if "frame" in given else given["list"])
print(json.dumps([str(a) for a in answers]))
print(json.dumps(model.metadata.get_input_schema().input_names()))
example = model.input_example  # the logged input example, answered as MLflow's UI and serving docs offer it
print(json.dumps([len(example), len(model.predict(example))]))
