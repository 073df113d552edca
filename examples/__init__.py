"""Bundled demo warehouse: the `shop` dbt project and its deterministic data generator."""
