"""The two ways a site-deploy fails: before anything is written, or while converging."""

from __future__ import annotations

from nodekiln.openstack.cloud import OpenStackError


class CheckError(OpenStackError):
    """Something the site needs is missing from the cloud; nothing was created."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(
            "\n".join(problems)
            if len(problems) == 1
            else f"{len(problems)} problems, nothing was created:\n" + "\n".join(f"  {p}" for p in problems)
        )


class DeployError(OpenStackError):
    """Some resources failed; a rerun converges the rest once the cause is fixed."""
