"""Production dbt runs: their artifacts, read from a target directory or fetched from dbt Cloud."""
