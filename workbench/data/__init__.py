"""Data: raw annotations -> canonical dataset -> splits.

``importers/`` parse each input format, :mod:`.canonical` writes and reads the one on-disk dataset,
then :mod:`.splits` / :mod:`.holdout` assign splits, :mod:`.leakage` checks them, :mod:`.subsets`
and :mod:`.tiling` derive new datasets, :mod:`.exporters` write other formats, ``audit/`` describes a
dataset and ``library/`` composes training libraries by style level.
"""
