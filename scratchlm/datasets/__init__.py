"""Data sets that come as archives of their own layout, read the way their seed code reads them.

:mod:`scratchlm.datasets.imdb`: the IMDB reviews (``aclImdb/``) of Chollet's Transformer seed.
Plain-text corpora are :mod:`scratchlm.corpora`; batches are :mod:`scratchlm.batching`.
"""
