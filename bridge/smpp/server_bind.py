"""How the SMPP server answers a bind: authentication and the limits around it.

A bind is the one request of the SMSC side that needs more than its connection: the accounts
(password hashes, checked off the loop in a bounded pool), brute-force slow-down and lockout,
max_binds across this server's sessions and, in cluster mode, across nodes. It runs once per
connection, off the message path, so it lives apart from the connection's byte handling
(:mod:`bridge.smpp.server_connection`).
"""

from __future__ import annotations

import asyncio
import functools
from typing import TYPE_CHECKING

import structlog

from bridge.core.accounts import AuthResult
from bridge.core.accounts import BindType as AccountBindType
from bridge.smpp.events import BindRequested
from bridge.smpp.hash_pool import PoolBusy
from bridge.smpp.pdu import Status

if TYPE_CHECKING:
    from bridge.smpp.server_connection import ServerConnection

__all__ = ["authenticate_bind"]

log = structlog.get_logger("bridge.smpp")


async def authenticate_bind(conn: ServerConnection, ev: BindRequested) -> None:
    """Answer a bind: credentials, lockout and brute-force delay, max_binds (cluster-wide too);
    then accept_bind or reject_bind on the connection's session."""
    server = conn.server
    ip = conn.info.peer_ip
    bind_type = AccountBindType(ev.bind_type.value)
    accounts = server.accounts
    reveal = server.config.reveal_bind_errors
    now = server.clock()
    if accounts.get(ev.system_id) is not None and server.lockout.locked(ev.system_id, ip, now):
        # Locked (README "Binds"): refused without looking at the password (no hashing).
        locked = int(Status.ESME_RBINDFAIL if reveal else Status.ESME_RINVPASWD)
        result = AuthResult(locked, accounts.get(ev.system_id), "account locked out")
        server.metrics.smpp_event("bind_locked")
    elif accounts.would_block(ev.system_id, ev.password):
        # A password hash not verified before costs tens of ms of CPU: keep it off the
        # loop, in a bounded pool (bridge/smpp/hash_pool.py).
        try:
            result = await server.hash_pool.run(
                ip,
                functools.partial(
                    accounts.authenticate,
                    ev.system_id,
                    ev.password,
                    bind_type,
                    ip,
                    reveal=reveal,
                ),
            )
        except PoolBusy:
            result = AuthResult(
                Status.ESME_RBINDFAIL, accounts.get(ev.system_id), "password checks busy"
            )
    else:
        result = accounts.authenticate(ev.system_id, ev.password, bind_type, ip, reveal=reveal)
    status = result.status
    account = result.account
    reason = result.reason
    if status == 0 and account is not None:
        bound = server.bound_count(account.system_id)
        if account.max_binds and bound >= account.max_binds:
            status, reason = Status.ESME_RBINDFAIL, f"max_binds {account.max_binds} reached"
        elif (
            account.max_binds
            and server.bind_gate is not None
            # Cluster mode: the binds of the other nodes count too (bridge/store/cluster.py).
            and not await server.bind_gate(account.system_id, account.max_binds, bound)
        ):
            status = Status.ESME_RBINDFAIL
            reason = f"max_binds {account.max_binds} reached across the cluster"
    if conn._closed or conn.transport is None or conn.transport.is_closing():
        return
    if status != 0 or account is None:
        # Never the raw system_id of a failed bind as a label: unknown ones are unbounded.
        server.metrics.bind(
            account.system_id if account is not None else "unknown",
            ev.bind_type.value,
            ok=False,
        )
        now = server.clock()
        if (
            reason == "wrong password"
            and account is not None
            and server.lockout.record_failure(account.system_id, now)
        ):
            log.warning(  # once per lock: not a flood
                "smpp.account_locked",
                system_id=account.system_id,
                failures=server.lockout.max_failures,
                seconds=server.lockout.duration,
            )
        # The n-th consecutive failure waits base_delay * 2**(n-1), the first one included.
        delay = server.throttle.record_failure(ip, now, ev.system_id)
        server.metrics.smpp_event("bind_rejected")
        server.sampled(
            "warning",
            "smpp.bind_rejected",
            ip,
            session=conn.info.id,
            peer=ip,
            system_id=ev.system_id,
            bind_type=ev.bind_type.value,
            status=status,
            reason=reason,
            delay=round(delay, 3),
        )
        if delay > 0:
            await asyncio.sleep(delay)
        if conn._closed:
            return
        conn.session.reject_bind(status or Status.ESME_RBINDFAIL)
        conn._flush()
        return
    server.throttle.record_success(ip, account.system_id)
    server.lockout.record_success(account.system_id, ip)
    server.admission.bound(conn)
    conn.session.accept_bind(max_outstanding=account.max_outstanding)
    server.metrics.bind(account.system_id, ev.bind_type.value, ok=True)
    conn.info.system_id = account.system_id
    conn.info.bind_type = ev.bind_type
    conn.info.account = account
    conn._limiter = server.limiter_for(account)
    conn.log = conn.log.bind(system_id=account.system_id)
    server.sampled(
        "info",
        "smpp.bound",
        account.system_id,
        session=conn.info.id,
        peer=ip,
        system_id=account.system_id,
        bind_type=ev.bind_type.value,
    )
    conn._flush()
    try:
        server.handler.session_bound(conn.info)
    except Exception:
        conn.log.exception("smpp.session_bound_hook_failed")
    server._notify_receivers()
