"""Metric contracts: their declaration, the SQL fragments they carry, the dbt node each reads, and measuring them."""
