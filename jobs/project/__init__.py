"""The dbt project in its git repository: dbt in-process, git, worktrees, packages and lineage."""
