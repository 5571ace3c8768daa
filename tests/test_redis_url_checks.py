"""Redis settings redis-py can only refuse when it connects are refused early.

A protocol other than 2 or 3, an ``ssl_cert_reqs`` redis-py does not know, a
TLS file that is not there: redis-py keeps them as given and fails at the
first command, as an outage (retried, and admitted under the shadow budget
in open mode) or as a raw ``RedisError``. The stores refuse them with
``ConfigError`` when they are made, and map the ones only a connection
shows to ``ConfigError`` too. A server that refuses Lua scripts is a
``StoreUnavailable`` that says so; credential hints fit the URL's kind.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
from _redis_fixtures import OwnRedis
from redis._parsers.base import BaseParser

from governor import ConfigError, StoreUnavailable
from governor.cli import main
from governor.stores import FailoverLedger, Line, RedisConfig
from governor.stores._redis import (
    RedisConnections,
    RedisLedger,
    credentials_advice,
    refusal_advice,
)

LINE = Line("team:t", limit_nanos=10**9)


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("protocol=9", "protocol='9', which redis-py cannot use: give 2 or 3"),
        ("protocol=abc", "protocol='abc', which redis-py cannot use: give 2 or 3"),
        (
            "ssl_cert_reqs=bogus",
            "ssl_cert_reqs='bogus', which redis-py cannot use: give one of none, "
            "optional, required",
        ),
        ("ssl_cert_reqs=Required", "give one of none, optional, required"),
        (
            "ssl_ca_certs=/nonexistent/ca.pem",
            "ssl_ca_certs='/nonexistent/ca.pem', which redis-py cannot use: give "
            r"the path of a PEM file of CA certificates that this process can "
            r"read \(nothing is there\)",
        ),
        ("ssl_certfile=/nonexistent/c.pem", "ssl_certfile=.*nothing is there"),
        ("ssl_ca_path=/nonexistent", "ssl_ca_path=.*folder.*nothing is there"),
        ("ssl_min_version=5", r"ssl_min_version='5'.*771 \(TLSv1_2\)"),
        ("ssl_ciphers=BOGUS", "ssl_ciphers='BOGUS'.*OpenSSL cipher list"),
        (f"ssl_keyfile={__file__}", "ssl_keyfile is given without ssl_certfile"),
        (
            "ssl_validate_ocsp=true&ssl_validate_ocsp_stapled=true",
            "both on",
        ),
    ],
)
def test_a_tls_or_protocol_value_is_refused_when_the_ledger_is_made(
    query: str, says: str
) -> None:
    """The ConfigError names the option, the value and what to give."""
    url = f"rediss://:s3cret@127.0.0.1:6399/0?{query}"
    with pytest.raises(ConfigError, match=says) as caught:
        RedisLedger(url, prefix="never-used:")
    assert "s3cret" not in str(caught.value)


def test_a_folder_or_a_file_without_certificates_is_no_ca_file(
    tmp_path: Path,
) -> None:
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("no certificate here\n")
    with pytest.raises(ConfigError, match=r"\(it is a folder\)"):
        RedisConfig(url=f"rediss://127.0.0.1:6399/0?ssl_ca_certs={tmp_path}")
    with pytest.raises(ConfigError, match="this file holds none"):
        RedisConfig(url=f"rediss://127.0.0.1:6399/0?ssl_ca_certs={not_pem}")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6399/0?ssl_cert_reqs=none",
        "unix:///run/redis.sock?ssl_cert_reqs=none",
    ],
)
def test_tls_options_need_a_rediss_url(url: str) -> None:
    """redis-py would fail with a TypeError at the first command."""
    with pytest.raises(ConfigError, match=r"only to a TLS connection.*rediss://"):
        RedisConfig(url=url)


def _ca_file(tmp_path: Path) -> tuple[str, str]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl binary to make a test certificate")
    cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", key, "-out", cert, "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_usable_tls_and_protocol_values_pass(tmp_path: Path) -> None:
    cert, key = _ca_file(tmp_path)
    query = (
        f"ssl_cert_reqs=required&protocol=3&ssl_min_version=771&ssl_ca_certs={cert}"
        f"&ssl_certfile={cert}&ssl_keyfile={key}&ssl_ciphers=ECDHE%2BAESGCM"
        f"&ssl_ca_path={tmp_path}"
    )
    RedisConfig(url=f"rediss://127.0.0.1:6399/0?{query}")
    RedisConfig(url="redis://127.0.0.1:6399/0?protocol=2")


def test_the_spend_and_cache_stores_refuse_them_too() -> None:
    from governor.cache._redis_store import RedisCacheStore
    from governor.spend._redis import RedisSpendStore

    with pytest.raises(ConfigError, match="protocol=9"):
        RedisSpendStore.from_url("redis://127.0.0.1:6399/0?protocol=9")
    with pytest.raises(ConfigError, match="ssl_cert_reqs='bogus'"):
        RedisCacheStore.from_url("rediss://127.0.0.1:6399/0?ssl_cert_reqs=bogus")


def test_budget_status_exits_2_with_config_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = "rediss://127.0.0.1:6399/0?ssl_cert_reqs=bogus"
    code = main(["budget", "status", "--json", "--redis-url", url, "--prefix", "x:"])
    assert code == 2
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "config_error"
    assert "ssl_cert_reqs='bogus'" in error["message"]


def test_connection_kwargs_values_are_checked_when_the_config_is_made() -> None:
    with pytest.raises(ConfigError, match="connection_kwargs sets protocol=9"):
        RedisConfig(connection_kwargs={"protocol": 9})
    with pytest.raises(ConfigError, match="ssl_cert_reqs='bogus'"):
        RedisConfig(url="rediss://h/0", connection_kwargs={"ssl_cert_reqs": "bogus"})
    with pytest.raises(ConfigError, match="only to a TLS connection"):
        RedisConfig(connection_kwargs={"ssl_cert_reqs": "none"})


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"socket_timeout": 0}, r"socket_timeout=0, .*above 0, such as 2"),
        ({"socket_timeout": -1}, r"socket_timeout=-1, .*above 0"),
        ({"socket_timeout": None}, r"socket_timeout=None, .*above 0"),
        ({"socket_connect_timeout": "abc"}, r"socket_connect_timeout='abc'"),
        ({"max_connections": 0}, r"max_connections=0, .*at least 1"),
        ({"bogus_option": 1}, r"sets bogus_option, which redis-py does not take"),
        ({1: 2}, r"sets 1, which redis-py does not take"),
        ({"decode_responses": False}, r"decode_responses=False: leave it out"),
        ({"db": 99}, r"db=99: name the database in the URL"),
    ],
)
def test_connection_kwargs_redis_py_cannot_use_are_refused_up_front(
    kwargs: dict[object, object], says: str
) -> None:
    """Each of these used to fail every call later, with a bare ValueError or
    TypeError (whatever the failure mode), or be ignored (db), or charge a
    call and then lose its answer (decode_responses=False)."""
    with pytest.raises(ConfigError, match=says):
        RedisConfig(url="redis://127.0.0.1:6379/0", connection_kwargs=kwargs)  # type: ignore[arg-type]


def test_connection_kwargs_redis_py_can_use_are_kept() -> None:
    kwargs = {"socket_timeout": 3, "client_name": "w1", "decode_responses": True}
    config = RedisConfig(connection_kwargs=kwargs)
    assert dict(config.connection_kwargs) == kwargs


def test_a_url_naming_two_databases_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"database 4 in its path and '5' in \?db="):
        RedisConfig(url="redis://127.0.0.1:6379/4?db=5")
    assert RedisConfig(url="redis://127.0.0.1:6379/4?db=04").url.endswith("db=04")


def _free_url(scheme: str = "redis") -> str:
    return f"{scheme}://127.0.0.1:{OwnRedis().port}/0"


def _bypassed(url: str, **kwargs: object) -> RedisConfig:
    """A config holding kwargs its checks would refuse (as a later redis-py
    might refuse a value these checks let pass)."""
    config = RedisConfig(url=url, attempts=3, retry_wait_s=0.01)
    object.__setattr__(config, "connection_kwargs", kwargs)
    return config


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (
            lambda: _bypassed(_free_url("rediss"), ssl_cert_reqs="bogus"),
            "Invalid SSL Certificate Requirements Flag: bogus",
        ),
        (lambda: _bypassed(_free_url(), protocol=9), "Give protocol=2 or protocol=3"),
        (
            lambda: RedisConfig(
                url=_free_url("rediss"),
                connection_kwargs={"ssl_ca_certs": "/nonexistent/ca.pem"},
            ),
            r"ssl_ca_certs='/nonexistent/ca.pem' cannot be used.*nothing is there",
        ),
    ],
)
@pytest.mark.parametrize("mode", ["closed", "open"])
def test_a_setting_refused_at_connect_is_a_config_error_in_both_modes(
    config: Callable[[], RedisConfig], says: str, mode: Literal["closed", "open"]
) -> None:
    """Not retried as an outage, not admitted in open mode, not a raw error."""
    ledger = FailoverLedger(RedisLedger(config(), prefix="never-used:"), mode=mode)
    with pytest.raises(ConfigError, match=says) as caught:
        ledger.reserve("h", [LINE], 10, 0, 60)
    assert "not retried" in str(caught.value)
    assert not ledger.degraded

    async def areserve() -> None:
        await ledger.areserve("h2", [LINE], 10, 0, 60)

    with pytest.raises(ConfigError, match=says):
        asyncio.run(areserve())


def test_a_missing_unix_socket_is_still_an_outage() -> None:
    """A file that is not there means a TLS file only when one is configured."""
    config = RedisConfig(url="unix:///nonexistent/redis.sock", attempts=1)
    with pytest.raises(StoreUnavailable, match="did not answer"):
        RedisLedger(config, prefix="never-used:").reserve("h", [LINE], 1, 0, 60)


# -- a server that refuses Lua scripts ---------------------------------------


@pytest.fixture
def no_scripts() -> Iterator[OwnRedis]:
    server = OwnRedis()
    server.start("--rename-command", "EVALSHA", "", "--rename-command", "EVAL", "")
    yield server
    server.kill()


def test_a_server_without_scripting_is_unavailable_and_says_why(
    no_scripts: OwnRedis,
) -> None:
    ledger = FailoverLedger(RedisLedger(no_scripts.url, prefix="t:"))
    with pytest.raises(StoreUnavailable) as caught:
        ledger.reserve("h", [LINE], 10, 0, 60)
    text = str(caught.value)
    assert "refuses Lua scripts" in text
    assert "+@scripting" in text
    assert "with args beginning with" not in text
    assert caught.value.advice is not None
    assert "rename-command" in caught.value.advice


def test_fail_open_without_scripting_logs_why(
    no_scripts: OwnRedis, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = FailoverLedger(RedisLedger(no_scripts.url, prefix="t:"), mode="open")
    with caplog.at_level("WARNING", logger="governor.stores._failover"):
        assert ledger.reserve("h", [LINE], 10, 0, 60) is None
    assert ledger.degraded
    assert "This Redis refuses Lua scripts" in caplog.text


def test_a_server_without_scripting_says_why_to_async_callers(
    no_scripts: OwnRedis,
) -> None:
    ledger = RedisLedger(no_scripts.url, prefix="t:")

    async def areserve() -> None:
        await ledger.areserve("h", [LINE], 10, 0, 60)

    with pytest.raises(StoreUnavailable, match="refuses Lua scripts"):
        asyncio.run(areserve())


@pytest.mark.parametrize(
    "reply",
    [
        "ERR unknown command 'EVALSHA', with args beginning with: 'abc' '2'",
        "ERR unknown command 'SCRIPT', with args beginning with: 'LOAD'",
        "NOPERM User app has no permissions to run the 'evalsha' command",
        "NOPERM this user has no permissions to run the 'script|load' command",
    ],
)
def test_refused_scripting_gets_its_own_advice(reply: str) -> None:
    advice = refusal_advice(BaseParser.parse_error(reply)) or ""
    assert advice.startswith("This Redis refuses Lua scripts")


def test_other_unknown_commands_are_no_refusal() -> None:
    reply = "ERR unknown command 'FOO', with args beginning with: "
    assert refusal_advice(BaseParser.parse_error(reply)) is None


# -- cosmetics: hints that fit the URL, sentences that start in capitals ------


def test_the_noauth_hint_fits_the_url_kind() -> None:
    noauth = BaseParser.parse_error("NOAUTH Authentication required.")
    unix = credentials_advice(noauth, "unix:///run/redis/redis.sock?db=1") or ""
    assert "unix://:PASSWORD@/run/redis/redis.sock" in unix
    assert "unix://USER:PASSWORD@/run/redis/redis.sock" in unix
    assert "redis://" not in unix
    tls = credentials_advice(noauth, "rediss://h:6380/0") or ""
    assert "rediss://:PASSWORD@host:port/db" in tls
    plain = credentials_advice(noauth) or ""
    assert "redis://:PASSWORD@host:port/db" in plain


def test_every_refusal_advice_starts_a_sentence() -> None:
    connections = RedisConnections(RedisConfig(url=_free_url()))
    reply = (
        "ERR Error running script (call to f_1): @user_script:7: The user "
        "executing the script can't run this command or subcommand script: "
        "user_script:7."
    )
    error = connections.unavailable("reserve", BaseParser.parse_error(reply))
    assert "user_script:7. The Redis user may not run" in str(error)
    readonly = BaseParser.parse_error("READONLY You can't write against a replica.")
    assert (refusal_advice(readonly) or "")[0].isupper()


def _silent_ledger(scheme: str, port: int) -> object:
    from governor.stores import RedisLedger

    config = RedisConfig(
        url=f"{scheme}://127.0.0.1:{port}/0",
        socket_timeout_s=0.3,
        connect_timeout_s=0.3,
        attempts=1,
    )
    return RedisLedger(config, prefix="never-written:")


@pytest.mark.parametrize(("scheme", "hinted"), [("rediss", True), ("redis", False)])
def test_a_tls_url_timing_out_on_a_plain_port_says_so(
    scheme: str, hinted: bool
) -> None:
    """rediss:// to a server that answers no TLS handshake times out; the
    error says that a plain port is the likely cause, not only 'reachable'."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, says nothing
        ledger: Any = _silent_ledger(scheme, silent.getsockname()[1])
        with pytest.raises(StoreUnavailable) as caught:
            ledger.reserve("h1", [Line("t", limit_nanos=10)], 1, 1, ttl_s=5)
        ledger.close()
    assert ("use redis:// for such a server" in str(caught.value)) is hinted


def test_a_unix_socket_path_may_hold_an_at_sign() -> None:
    """unix:///run/redis/redis-server@main.sock names a socket file, whose
    name may hold '@' (systemd's instance units): it is not user info."""
    config = RedisConfig(url="unix:///run/redis/redis-server@main.sock?db=1")
    assert "redis-server@main.sock" in repr(config)
