"""Cairn's exception hierarchy: every error carries the message a user should read."""


class CairnError(Exception):
    """Base of every error Cairn expects; `str()` is the user-facing message."""

    exit_code = 1


class ConfigError(CairnError):
    """A configuration or contract declaration is invalid; the message names file, field and value."""

    exit_code = 2


class ContractError(CairnError):
    """A metric contract cannot be compiled or evaluated."""


class TransientError(CairnError):
    """A failure worth retrying as is: a lock held by a running build, a timeout, a 5xx."""


class WarehouseError(CairnError):
    """The warehouse refused or failed a query."""


class WarehouseBusy(WarehouseError, TransientError):
    """The warehouse is held by another writer (a dbt run) or timed out: retry later."""


class DbtError(CairnError):
    """A dbt invocation failed."""


class DbtExited(DbtError):
    """dbt's process died before it answered (a model that exits, a crash, a kill): no parse problem to widen."""


class StoreError(CairnError):
    """The store is missing, unreachable or at the wrong schema version."""


class NotFound(CairnError):
    """A named record (incident, contract) does not exist."""


class QueueUnavailable(CairnError):
    """Redis cannot be reached: nothing was enqueued, or which jobs are live cannot be told."""


class ArtifactError(CairnError):
    """A dbt run's artifacts are missing or malformed; the message names the file and the field."""
