"""Authenticated queue messages: every message between the supervisor and an environment is
signed with that environment's key, and checked before it is decoded.

Keys
    APP_MESSAGE_SECRETS holds the master secrets (comma-separated, each >= 32 characters).
    Environment X's key is HMAC-SHA256(secret, "appsup-env:" + X): the supervisor derives the
    key of any environment from the secrets; an environment holds only its own key(s)
    (APP_ENVIRONMENT_KEYS, hex, printed by `manage.py environment_key X` on the supervisor), so
    env_a cannot sign as env_b. For development an environment may hold the master secrets
    instead (system-check warning supervisor.W002): it then derives its own key, and still
    signs only as itself, but a compromised one could sign as anyone.

    Commands to X and everything X sends (reports, pongs, heartbeats, goodbyes, start
    requests) are signed with X's key. Which process signs is decided by what it is: an
    environment (ENVIRONMENT_NAME set) signs as itself whatever the message says; the
    supervisor signs with the key of the message's `env`.

Envelope (added by `sign`, which transport.publish calls for every message it sends)
    kid  the environment whose key signed (lets the receiver pick the key; a valid signature
         whose `kid` differs from the message's `env` is a cross-environment message)
    ts   the sender's time.time()
    mid  a random UUID, the message's identity for replay detection
    sig  hex HMAC-SHA256 over the canonical JSON (sorted keys, compact separators, ASCII) of
         the message without `sig`

Verification order (`verify`, then workers.messages.decode, then `already_processed`)
    not a JSON object -> "malformed"; `v` not this version -> "bad_version" (the version says
    how the envelope is built, so it is read first; nothing else is trusted before the
    signature); no `sig` -> "unsigned"; no key for `kid` (an environment has only its own) ->
    "cross_environment" (a supervisor without secrets -> "no_key"); no key matches
    (hmac.compare_digest against each, so every rotation secret verifies) -> "bad_signature";
    `env` != `kid` -> "cross_environment"; `ts` older than APP_MESSAGE_MAX_AGE or more than
    MAX_FUTURE seconds ahead -> "stale"; then the message is decoded as before; a `mid` this
    receiver already processed -> "replayed". Callers log each rejection and count it by
    reason (metrics.message_rejected).

Replay window
    A message is accepted for APP_MESSAGE_MAX_AGE seconds after its `ts` (default: the command
    time limit plus the heartbeat grace, the age at which the supervisor gives up on a command
    anyway). Within that window a processed `mid` is remembered in Redis
    (`appsup<prefix>:seen:<receiver>:<mid>`, TTL = max age + MAX_FUTURE), so a copy is refused.
    The id is recorded only once the message has been processed (or its handler raised), never
    on receipt: Celery's late-ack redelivery of a message whose worker died mid-way carries the
    same `mid`, and must still be handled (idempotently, as before). The price: a copy that
    arrives while the original is being processed is not caught; handlers are idempotent and
    ordered by the environment's clock, so it changes nothing. After the window, `ts` alone
    refuses it.

Redis down
    The seen-id check needs the config cache's Redis. If it cannot be reached the message is
    accepted on signature and age alone (logged, at most every RETRY_AFTER seconds, during
    which the store is not asked again so a dead Redis does not add a connect timeout to every
    message). Losing Redis (restart, FLUSHALL) loses the seen ids: replays within the current
    window become possible again, nothing else. Nothing is stored by signing itself.

Rotation ("the first signs, all verify")
    Zero-loss order: 1. APP_MESSAGE_SECRETS="old,new" everywhere (all still sign with old, all
    accept new); 2. "new,old" everywhere (sign with new); 3. after APP_MESSAGE_MAX_AGE seconds,
    "new". Environments holding APP_ENVIRONMENT_KEYS get `manage.py environment_key X` again
    after each step. Restarting everything at once, "new,old" then "new" is enough; in a rolling
    restart the three steps avoid rejecting messages signed with the new secret by a process
    that does not know it yet.

Clocks: `ts` is the sender's clock, so the age check assumes clocks within MAX_FUTURE seconds
(NTP). Liveness is still judged by the receiver's clock (services).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.conf import settings

from workers.messages import NAME, VERSION, MessageError

log = logging.getLogger("workers")

KEY_CONTEXT = "appsup-env:"
ENVELOPE = ("kid", "ts", "mid", "sig")
# How far ahead of the receiver's clock a sender's may be (seconds).
MAX_FUTURE = 60.0
# After a failure, the seen-id store is not asked again for this long (seconds).
RETRY_AFTER = 10.0
_HEX_SIG = re.compile(r"^[0-9a-f]{64}$")


@lru_cache(maxsize=16384)
def environment_key(secret: str, environment: str) -> bytes:
    """Environment `environment`'s signing key under master secret `secret`."""
    return hmac.new(secret.encode(), (KEY_CONTEXT + environment).encode(), hashlib.sha256).digest()


def environment_keys_value(secrets: Iterable[str], environment: str) -> str:
    """APP_ENVIRONMENT_KEYS for `environment`: its key under each master secret, in order
    (what `manage.py environment_key` prints)."""
    return ",".join(environment_key(secret, environment).hex() for secret in secrets)


def canonical(message: dict[str, Any]) -> bytes:
    """What is signed: the message without `sig`, as canonical JSON."""
    body = {key: value for key, value in message.items() if key != "sig"}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _mac(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def seal(
    message: dict[str, Any],
    *,
    key: bytes,
    kid: str,
    ts: float | None = None,
    mid: str | None = None,
) -> dict[str, Any]:
    """`message` with a new envelope signed by `key` (tests use it to forge messages)."""
    sealed = {k: v for k, v in message.items() if k not in ENVELOPE}
    sealed.update(kid=kid, ts=time.time() if ts is None else ts, mid=mid or str(uuid.uuid4()))
    sealed["sig"] = _mac(key, canonical(sealed))
    return sealed


@dataclass(frozen=True)
class Keyring:
    """The keys of this process. `own` is this environment's name; "" on the supervisor,
    which derives every environment's keys from `secrets`."""

    own: str
    secrets: tuple[str, ...]
    own_keys: tuple[bytes, ...]

    def keys_for(self, environment: str) -> tuple[bytes, ...]:
        """Keys that verify messages signed as `environment` (the first one signs)."""
        if self.own:
            return self.own_keys if environment == self.own else ()
        return tuple(environment_key(secret, environment) for secret in self.secrets)

    def signer_for(self, message: dict[str, Any]) -> str:
        """As whom this process signs `message`: an environment only ever as itself."""
        return self.own or message.get("env", "")


@lru_cache(maxsize=8)
def _keyring(own: str, secrets: tuple[str, ...], env_keys: tuple[str, ...]) -> Keyring:
    if env_keys:
        own_keys = tuple(bytes.fromhex(key) for key in env_keys)
    else:
        own_keys = tuple(environment_key(secret, own) for secret in secrets) if own else ()
    return Keyring(own=own, secrets=secrets, own_keys=own_keys)


def keyring() -> Keyring:
    # Keys are checked by supervisor.E014 where checks run; a key that is not hex is skipped
    # here (the Celery worker runs no checks), so it fails verification instead of crashing.
    env_keys = tuple(key for key in settings.APP_ENVIRONMENT_KEYS if _is_hex_key(key))
    return _keyring(settings.ENVIRONMENT_NAME, tuple(settings.APP_MESSAGE_SECRETS), env_keys)


def _is_hex_key(value: str) -> bool:
    try:
        return len(bytes.fromhex(value)) == 32
    except ValueError:
        return False


def sign(message: Any) -> Any:
    """`message` sealed with this process's key for it. Something that names no environment
    (or is no object) cannot be signed: it goes as it is, and its receiver rejects it."""
    if not isinstance(message, dict):
        return message
    ring = keyring()
    kid = ring.signer_for(message)
    if not isinstance(kid, str) or not NAME.fullmatch(kid):
        return message
    keys = ring.keys_for(kid)
    if not keys:
        raise MessageError(
            f"no key to sign as {kid}: set APP_MESSAGE_SECRETS (supervisor) or "
            "APP_ENVIRONMENT_KEYS (environment)",
            "no_key",
        )
    return seal(message, key=keys[0], kid=kid)


@dataclass(frozen=True)
class Envelope:
    kid: str
    ts: float
    mid: str


def verify(data: Any, *, now: float | None = None) -> Envelope:
    """Check `data`'s envelope (see the module docstring for the order); raise MessageError
    with the reason of the first check that fails."""
    if not isinstance(data, dict):
        raise MessageError("a message must be a JSON object")
    if data.get("v") != VERSION:
        raise MessageError(f"unsupported message version {data.get('v')!r}", "bad_version")
    sig = data.get("sig")
    if sig is None:
        raise MessageError("unsigned message", "unsigned")
    kid = data.get("kid")
    if not isinstance(sig, str) or not _HEX_SIG.fullmatch(sig):
        raise MessageError("sig is not a hex HMAC-SHA256", "bad_signature")
    if not isinstance(kid, str) or not NAME.fullmatch(kid):
        raise MessageError("kid does not name an environment", "bad_signature")
    ring = keyring()
    keys = ring.keys_for(kid)
    if not keys:
        if ring.own:
            raise MessageError(
                f"signed with {kid}'s key, but this is {ring.own}", "cross_environment"
            )
        raise MessageError("no APP_MESSAGE_SECRETS to verify with", "no_key")
    try:
        body = canonical(data)
    except ValueError:  # NaN or Infinity: not JSON a sender of ours writes
        raise MessageError("a message must be plain JSON") from None
    matched = False
    for key in keys:  # no short cut: every key is compared, in constant time
        matched |= hmac.compare_digest(_mac(key, body), sig)
    if not matched:
        raise MessageError(f"signature does not match {kid}'s key", "bad_signature")
    env = data.get("env")
    if env != kid:
        raise MessageError(
            f"{kid}'s key signed a message for {str(env)[:60]!r}", "cross_environment"
        )
    ts, mid = data.get("ts"), data.get("mid")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise MessageError("ts must be a number")
    try:
        mid = str(uuid.UUID(str(mid)))
    except ValueError:
        raise MessageError("mid must be a UUID") from None
    now = time.time() if now is None else now
    max_age = settings.APP_MESSAGE_MAX_AGE
    if now - ts > max_age:
        raise MessageError(
            f"message {mid} from {kid} is {now - ts:.0f} s old (limit {max_age} s)", "stale"
        )
    if ts - now > MAX_FUTURE:
        raise MessageError(
            f"message {mid} from {kid} is dated {ts - now:.0f} s ahead (limit {MAX_FUTURE:.0f} s)",
            "stale",
        )
    return Envelope(kid=kid, ts=float(ts), mid=mid)


# --- replay: ids of processed messages, in Redis --------------------------------------------
_store_lock = threading.Lock()
_store_down_until = 0.0


def _store_failed(exc: Exception) -> None:
    global _store_down_until
    with _store_lock:
        log.warning(
            "seen-message store unavailable (%s): accepting messages on signature and age "
            "alone for %.0f s",
            exc,
            RETRY_AFTER,
        )
        _store_down_until = time.monotonic() + RETRY_AFTER


def _store_usable() -> bool:
    return time.monotonic() >= _store_down_until


def _seen_key(receiver: str, mid: str) -> str:
    return f"appsup{settings.APP_QUEUE_PREFIX}:seen:{receiver}:{mid}"


def already_processed(receiver: str, mid: str) -> bool:
    """Whether `receiver` (a queue's short name) processed message `mid` within the window.
    False when the store cannot be asked (logged)."""
    from apps.adapters import transport

    if not _store_usable():
        return False
    try:
        return bool(transport.redis_client().exists(_seen_key(receiver, mid)))
    except Exception as exc:
        _store_failed(exc)
        return False


def mark_processed(receiver: str, mid: str) -> None:
    from apps.adapters import transport

    if not _store_usable():
        return
    ttl = int(settings.APP_MESSAGE_MAX_AGE + MAX_FUTURE) + 1
    try:
        transport.redis_client().set(_seen_key(receiver, mid), b"1", ex=ttl)
    except Exception as exc:
        _store_failed(exc)


@contextmanager
def processing(receiver: str, mid: str) -> Iterator[None]:
    """Run a message's handler; record `mid` as processed once it returns or raises. A worker
    that dies in the middle records nothing, so Celery's redelivery is still handled."""
    try:
        yield
    except Exception:
        mark_processed(receiver, mid)
        raise
    mark_processed(receiver, mid)
