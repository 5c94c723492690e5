"""YAML presets shipped with DISSE (read through importlib.resources as disse.configs)."""
from importlib.resources import files
from pathlib import Path


def config_path(name: str) -> Path:
    """Path of a packaged config file, e.g. ``config_path("demo.yaml")``."""
    return Path(str(files(__name__).joinpath(name)))
