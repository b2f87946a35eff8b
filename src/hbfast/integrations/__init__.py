"""Drop-ins: hbfast's kernels behind the APIs of libraries people already train and search with.

Each submodule (``hbfast.integrations.<library>``) imports its library only when it is imported
itself, so the libraries stay optional.
"""
