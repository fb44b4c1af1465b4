"""The shipped models, installed as the package `hemato_models` (pyproject.toml maps it to this folder).

edge_app.core.model_path finds the default model here with importlib.resources, whatever the current folder.
"""
