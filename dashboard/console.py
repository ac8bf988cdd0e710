"""Sign-in to the operations console. The API checks the account's password and answers a
session token (`POST /auth/signin`); it lives in this browser session's state only, and the
admin calls carry it, so the API's audit trail names the person. Viewers (and anyone not
signed in) see every page; only operators get the controls."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import streamlit as st

from dashboard import data

KEY = "console_session"


def session() -> dict[str, Any] | None:
    """The signed-in session (account, role, token, expires_at), None once it expired."""
    s = st.session_state.get(KEY)
    if s is not None and datetime.fromisoformat(s["expires_at"]) <= datetime.now(UTC):
        del st.session_state[KEY]
        return None
    return s


def can_act() -> bool:
    s = session()
    return s is not None and s["role"] == "operator"


def token() -> str | None:
    s = session()
    return s["token"] if s is not None else None


def sign_in(account: str, password: str) -> tuple[int, Any]:
    """(status, body) of the API's sign-in; a 200 keeps the session."""
    try:
        r = httpx.post(data.api_url() + "/auth/signin", timeout=10,
                       json={"account": account, "password": password})
    except httpx.HTTPError as exc:
        return 0, f"API unreachable: {exc}"
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") \
        else r.text
    if r.status_code == 200:
        st.session_state[KEY] = body
    return r.status_code, body


def sidebar() -> None:
    """Who is signed in and a sign-out button, or the sign-in form."""
    s = session()
    if s is not None:
        st.sidebar.caption(f"signed in as **{s['account']}** ({s['role']}) until "
                           f"{s['expires_at'][:16].replace('T', ' ')} UTC")
        if st.sidebar.button("sign out"):
            del st.session_state[KEY]
            st.rerun()
        return
    with st.sidebar.form("signin", clear_on_submit=True):
        st.caption("viewing; operators sign in to act")
        account = st.text_input("account")
        password = st.text_input("password", type="password")
        if st.form_submit_button("sign in"):
            status, body = sign_in(account.strip(), password)
            if status == 200:
                st.rerun()
            detail = body.get("detail") if isinstance(body, dict) else body
            st.error(f"sign-in refused ({status}): {detail}")


def act(route: str, body: dict[str, Any]) -> tuple[int, Any]:
    """An admin call as the signed-in operator."""
    return data.admin_post(route, body, token())


def act_confirmed(sure: bool, route: str, body: dict[str, Any]) -> tuple[int, Any] | None:
    """`act` once the operator ticked the form's confirmation, its answer shown; None (and
    a warning) if not ticked."""
    if not sure:
        st.warning("Tick the confirmation first.")
        return None
    status, answer = act(route, body)
    ok = status in (200, 202)
    (st.success if ok else st.error)(f"{status}: {answer}")
    return status, answer


def needs_operator(what: str) -> None:
    st.caption(f"Sign in as an operator to {what}.")
