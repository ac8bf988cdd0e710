"""Which requests the ingress's hot path answers (pure: unit-tested without Ray)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backend.data.events import MAX_ID


def hot_request(scope: Mapping[str, Any]) -> tuple[int, int] | None:
    """(user_id, k) of a well-formed `GET /recommend/{user_id}[?k=N]`, else None."""
    path, root = scope["path"], scope.get("root_path") or ""
    if root and path.startswith(root):
        path = path[len(root):]
    if scope["method"] != "GET" or not path.startswith("/recommend/"):
        return None
    uid, query = path[11:], scope["query_string"]
    k = b"10"
    if query:
        if not query.startswith(b"k="):
            return None
        k = query[2:]
    if not (uid.isdigit() and k.isdigit() and uid.isascii() and k.isascii()
            and len(uid) <= 8 and len(k) <= 3):
        return None
    user_id, n = int(uid), int(k)
    if not (1 <= user_id <= MAX_ID and 1 <= n <= 100):
        return None
    return user_id, n
