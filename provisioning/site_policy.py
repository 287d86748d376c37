"""Write a site's policy files into its kit: ``consortia_policy.json``, FLARE's ``authorization.json`` and ``privacy.json``.

The policy model itself (``SitePolicy``) lives in ``app_custom.flare.site_policy_guard`` because the site component
that enforces it reads the same file. This module turns a policy into the files FLARE and our guard read:

- ``local/consortia_policy.json``: the policy as validated, read by ``SitePolicyGuard`` at every job deployment;
- ``local/authorization.json``: FLARE's ``authorization.json.default`` with the ``byoc`` right set to ``none`` for
  every role unless the policy allows custom code, so FLARE itself rejects jobs that ship code;
- ``local/privacy.json``: one scope ``consortia`` (the default scope) whose result filters are the policy's mandatory
  privacy filters. Without filters no ``privacy.json`` is written, and FLARE applies no privacy scope.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app_custom.flare.site_policy_guard import POLICY_FILE, SitePolicy

AUTHORIZATION_DEFAULT = "authorization.json.default"
PRIVACY_SCOPE = "consortia"


def authorization_with_byoc(default: dict[str, Any], allow_custom_code: bool) -> dict[str, Any]:
    """Return FLARE's authorization policy with custom code (the ``byoc`` right) turned off unless allowed.

    With ``allow_custom_code`` the policy is returned unchanged (FLARE's defaults: ``any`` for project_admin and
    lead). Otherwise every role gets ``byoc: none``; a role whose permissions are one string (``project_admin:
    "any"``) is expanded to that string for each right the policy names, so only ``byoc`` changes.
    """
    policy = json.loads(json.dumps(default))
    if allow_custom_code:
        return policy
    permissions: dict[str, Any] = policy.setdefault("permissions", {})
    rights = sorted({right for value in permissions.values() if isinstance(value, dict) for right in value})
    for role, value in list(permissions.items()):
        expanded = {right: value for right in rights} if isinstance(value, str) else dict(value)
        expanded["byoc"] = "none"
        permissions[role] = expanded
    return policy


def privacy_config(policy: SitePolicy) -> dict[str, Any] | None:
    """Return FLARE's ``privacy.json`` content for the policy's mandatory filters, or None without filters."""
    if not policy.privacy_filters:
        return None
    filters = [{"path": f.path, "args": dict(f.args)} for f in policy.privacy_filters]
    return {"scopes": [{"name": PRIVACY_SCOPE, "task_result_filters": filters}], "default_scope": PRIVACY_SCOPE}


def write_policy_files(local_dir: Path, policy: SitePolicy) -> None:
    """Write the policy, FLARE's authorization policy and its privacy scopes into a site's ``local`` folder.

    Raises:
        FileNotFoundError: when FLARE's ``authorization.json.default`` is missing from ``local_dir``.
    """
    local_dir = Path(local_dir)
    policy_file = local_dir / Path(POLICY_FILE).name
    policy_file.write_text(policy.model_dump_json(indent=2) + "\n", encoding="utf-8")
    default = json.loads((local_dir / AUTHORIZATION_DEFAULT).read_text(encoding="utf-8"))
    authorization = authorization_with_byoc(default, policy.allow_custom_code)
    (local_dir / "authorization.json").write_text(json.dumps(authorization, indent=2) + "\n", encoding="utf-8")
    privacy = privacy_config(policy)
    if privacy is not None:
        (local_dir / "privacy.json").write_text(json.dumps(privacy, indent=2) + "\n", encoding="utf-8")
