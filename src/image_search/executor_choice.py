"""Which executor an index run gets (executor.py): its work spread over a Ray cluster when the
`ray-address` key is set, else done in this process. The command line and the page ask here;
the index run itself (ingest.py) never imports the Ray executor."""

from __future__ import annotations

from .config import Settings
from .executor import Executor
from .executor_local import LocalExecutor


def executor_for(settings: Settings) -> Executor:
    """The executor for `settings`; a missing Ray extra is one line (exit 2) here, before
    anything is drawn or opened."""
    if not settings.ray_address:
        return LocalExecutor()
    from .cluster import RayExecutor  # Ray only for runs that use it

    return RayExecutor()
