"""Container images: references and digests, pulls, the cache, SIF files, builds.

Owns: :mod:`~shmbench.images.refs` (what names an image and pins it),
:mod:`~shmbench.images.fetch` (oras/https/file pulls), :mod:`~shmbench.images.store` (the
cache, the one file digest, ``make_once``), :mod:`~shmbench.images.sif` (reading and
unpacking SIF files), :mod:`~shmbench.images.deffile` (definition files),
:mod:`~shmbench.images.build` and :mod:`~shmbench.images.native` (building). Only the
builder imports a runtime module (it drives Apptainer when there is one).
"""
