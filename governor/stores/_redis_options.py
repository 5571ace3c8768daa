"""Checks of a Redis URL's TLS and protocol options, made without connecting.

redis-py keeps these options as given and uses them only when it opens a
connection, so a value it cannot use would surface at the first command: a
protocol other than 2 or 3 as if Redis were down (a fail-open governor then
runs on its shadow budget for good), an ``ssl_cert_reqs`` it does not know
as a bare ``RedisError``, a missing CA file as "No such file or directory",
like a server that is not there. :func:`option_problem` and
:func:`tls_problem` word what is wrong and what to give, so that the store
refuses the setting with :class:`~governor.ConfigError` when it is made, or,
for a file named in ``RedisConfig.connection_kwargs``, when it connects.
"""

from __future__ import annotations

import difflib
import os
import ssl
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Final

__all__ = [
    "FILE_OPTIONS",
    "TLS_OPTIONS",
    "misspelt_hint",
    "option_problem",
    "tls_problem",
]

_CERT_REQS: Final = ("none", "optional", "required")

FILE_OPTIONS: Final = frozenset(
    {"ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_ca_path"}
)
"""Options naming files (a folder for ``ssl_ca_path``) read when connecting."""

TLS_OPTIONS: Final = frozenset(
    {
        "ssl_ca_certs",
        "ssl_ca_data",
        "ssl_ca_path",
        "ssl_cert_reqs",
        "ssl_certfile",
        "ssl_check_hostname",
        "ssl_ciphers",
        "ssl_exclude_verify_flags",
        "ssl_include_verify_flags",
        "ssl_keyfile",
        "ssl_min_version",
        "ssl_ocsp_context",
        "ssl_ocsp_expected_cert",
        "ssl_password",
        "ssl_validate_ocsp",
        "ssl_validate_ocsp_stapled",
    }
)
"""Options only redis-py's TLS connection takes (a ``rediss://`` URL's)."""


def misspelt_hint(unknown: Sequence[str], known: Collection[str]) -> str:
    """``" (did you mean ...?)"`` naming the known option nearest each unknown
    one, or ``""`` when none is near.

    The match ignores case and reads ``-`` as ``_``, so that ``sockettimeout``,
    ``SocketTimeout`` and ``socket-timeout`` all point at ``socket_timeout``.
    """
    guesses = []
    for name in unknown:
        normal = name.lower().replace("-", "_")
        near = difflib.get_close_matches(normal, sorted(known), n=1)
        if near and near[0] != name:
            guesses.append(f"{near[0]} for {name}" if len(unknown) > 1 else near[0])
    if not guesses:
        return ""
    return f" (did you mean {', '.join(guesses)}?)"


def option_problem(name: str, value: object, *, files: bool = True) -> str | None:
    """What to give instead of ``value`` for the option ``name``, or None.

    ``value`` is as redis-py reads it from a URL (a string, or the number
    its parser makes) or as given in ``connection_kwargs``. With
    ``files=False`` the options naming files are not looked at.
    """
    if not files and name in FILE_OPTIONS:
        return None
    check = _CHECKS.get(name)
    return None if check is None or value is None else check(value)


def tls_problem(scheme: str, options: Mapping[str, object]) -> str | None:
    """What is wrong with the TLS options taken together, or None.

    ``options`` holds every connection option, from the URL and from
    ``connection_kwargs``; ``scheme`` is the URL's.
    """
    given = sorted(name for name in options if name in TLS_OPTIONS)
    if given and scheme != "rediss" and "connection_class" not in options:
        verb = "applies" if len(given) == 1 else "apply"
        return (
            f"{', '.join(given)} {verb} only to a TLS connection, and a "
            f"{scheme}:// URL opens a plain one: write the URL as rediss://..."
            " for TLS, or leave the TLS options out"
        )
    if options.get("ssl_keyfile") and not options.get("ssl_certfile"):
        return (
            "ssl_keyfile is given without ssl_certfile: give the client "
            "certificate too (ssl_certfile=cert.pem), or leave both out"
        )
    return _ocsp_problem(options)


def _ocsp_problem(options: Mapping[str, object]) -> str | None:
    full, stapled = (
        options.get("ssl_validate_ocsp") is True,
        options.get("ssl_validate_ocsp_stapled") is True,
    )
    if full and stapled:
        return (
            "ssl_validate_ocsp and ssl_validate_ocsp_stapled are both on, and "
            "redis-py validates one or the other: turn one of them off"
        )
    from redis.utils import CRYPTOGRAPHY_AVAILABLE

    if full and not CRYPTOGRAPHY_AVAILABLE:
        return (
            "ssl_validate_ocsp is on, which needs the cryptography package: "
            "pip install cryptography, or turn ssl_validate_ocsp off"
        )
    return None


def _protocol(value: object) -> str | None:
    if not isinstance(value, bool) and isinstance(value, (int, str)):
        try:
            if int(value) in (2, 3):
                return None
        except ValueError:
            pass
    return "2 or 3 (the RESP version), or leave protocol out for the default"


def _cert_reqs(value: object) -> str | None:
    if value in _CERT_REQS:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2:
        return None  # ssl.CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED
    return (
        f"one of {', '.join(_CERT_REQS)} (in lower case; redis-py reads no other value)"
    )


def _readable(value: object, what: str, folder: bool = False) -> str | None:
    """Why ``value`` is not the path of a ``what`` this process can read."""
    path = _path(value)
    if not path:
        why = f"got {value!r}"
    elif not os.path.exists(path):
        why = "nothing is there"
    elif os.path.isdir(path) != folder:
        why = "it is a folder" if os.path.isdir(path) else "it is not a folder"
    elif not os.access(path, os.R_OK):
        why = "this process may not read it"
    else:
        return None
    return f"the path of a {what} that this process can read ({why})"


def _path(value: object) -> str:
    """``value`` as a file system path ("" when it is none)."""
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return path if isinstance(path, str) else ""
    return ""


def _ca_file(value: object) -> str | None:
    found = _readable(value, "PEM file of CA certificates")
    if found is not None:
        return found
    try:
        ssl.create_default_context().load_verify_locations(cafile=_path(value))
    except (ssl.SSLError, OSError, ValueError):
        return "a PEM file of CA certificates (this file holds none)"
    return None


def _certfile(value: object) -> str | None:
    return _readable(value, "PEM file of the client certificate")


def _keyfile(value: object) -> str | None:
    return _readable(value, "PEM file of the client's private key")


def _ca_path(value: object) -> str | None:
    return _readable(value, "folder of CA certificates", folder=True)


def _ca_data(value: object) -> str | None:
    wants = "CA certificates as PEM text, or DER bytes"
    if not isinstance(value, (str, bytes)):
        return wants
    try:
        ssl.create_default_context().load_verify_locations(cadata=value)
    except (ssl.SSLError, ValueError):
        return wants
    return None


def _min_version(value: object) -> str | None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(value)
        context.minimum_version = ssl.TLSVersion(value)
    except (ValueError, TypeError):
        versions = ", ".join(f"{v.value} ({v.name})" for v in _TLS_VERSIONS)
        return f"a TLS version this Python supports: {versions}"
    return None


_TLS_VERSIONS: Final = (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


def _ciphers(value: object) -> str | None:
    wants = "an OpenSSL cipher list that names a cipher, such as ECDHE+AESGCM"
    if not isinstance(value, str):
        return wants
    try:
        ssl.create_default_context().set_ciphers(value)
    except ssl.SSLError:
        return wants
    return None


_CHECKS: Final[dict[str, Callable[[object], str | None]]] = {
    "protocol": _protocol,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ca_certs": _ca_file,
    "ssl_certfile": _certfile,
    "ssl_keyfile": _keyfile,
    "ssl_ca_path": _ca_path,
    "ssl_ca_data": _ca_data,
    "ssl_min_version": _min_version,
    "ssl_ciphers": _ciphers,
}
