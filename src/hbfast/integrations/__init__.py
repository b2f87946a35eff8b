"""Drop-in replacements for other libraries' classes, backed by hbfast's kernels.

Each submodule (``hbfast.integrations.<library>``) imports its library only when it is imported itself.
"""
