"""The dbt project in its git repository: dbt in-process, git, worktrees (and the later commits a
conflicting revert needs), packages and lineage."""
