"""Catalog-scale jobs: an input list cut into shards, each an idempotent unit of work with an
atomic manifest; engines that run the shards (local; Dask to come)."""
