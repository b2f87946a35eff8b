"""Other libraries' progress bars, logs and warnings, silenced for the ``hbfast`` command unless ``--verbose``.

Exists so that a command prints hbfast's own progress (one bar at a time) and its results only: no
transformers "Loading weights" / "Writing model shards" bars, no datasets "Generating train split" /
"Map" bars, no huggingface_hub or sentence-transformers logs, no library warnings. The environment
variables reach libraries not imported yet (the usual case: the CLI imports them later); libraries
already imported are told directly. Settings the user made in the environment are kept.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub's bars, and transformers' (which follow them)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",  # the fork warning of the tokenizers library
}
LOGGERS = ("transformers", "datasets", "huggingface_hub", "sentence_transformers", "torch", "accelerate", "PIL")
WARNING_MODULES = r"(transformers|datasets|huggingface_hub|sentence_transformers|accelerate|torch)(\..*)?$"


def quiet_libraries(verbose: bool) -> None:
    """Silence other libraries (``verbose=False``); ``verbose=True`` leaves them as they are."""
    if verbose:
        return
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for category in (UserWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=WARNING_MODULES)
    if "transformers" in sys.modules:
        from transformers.utils import logging as transformers_logging

        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
