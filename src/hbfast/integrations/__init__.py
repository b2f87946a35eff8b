"""Drop-ins: hbfast's kernels behind the APIs of libraries people already train and search with
(imported only from the submodule of each library, so the libraries stay optional)."""
