"""A Redis Cluster node as the budget store, and a client object for a URL.

The ledger's client is not cluster-aware: a plain cluster node answers keys of
slots it does not serve with MOVED (or ASK, CROSSSLOT, CLUSTERDOWN). Those
replies must come out as StoreUnavailable naming the cluster, so that closed
mode refuses the call with advice and open mode falls back to the shadow
budget, as for any outage. The cluster is our own: two redis-server nodes on
127.0.0.1:6394 and 6395, slots 0-8191 on the first (where ``{sem:team:a}``
hashes, slot 8165) and 8192-16383 on the second (``{budgets}``, slot 14259).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aredis
from _redis_fixtures import OwnRedis
from redis._parsers.base import BaseParser

from conftest import MOCK_COST
from governor import Budget, ConfigError, Fanout, Governor, Policy, StoreUnavailable
from governor.adapters.litellm import GovernedLiteLLM
from governor.cli import main
from governor.stores import Line, RedisConfig, RedisLedger
from governor.stores._redis import RedisConnections, refusal_advice

MESSAGES = [{"role": "user", "content": "What is the capital of Peru?"}]
PORTS = (6394, 6395)
LINE = Line("team:a", limit_nanos=10**9)
CLUSTER_NODE = "is a Redis Cluster node"


class Cluster:
    """Two cluster nodes: ``sem_node`` serves the slot of ``{sem:team:a}``,
    ``budget_node`` the slot of ``{budgets}``; neither follows the other."""

    def __init__(self, sem_node: OwnRedis, budget_node: OwnRedis) -> None:
        self.sem_node = sem_node
        self.budget_node = budget_node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A private two-node Redis Cluster on ports 6394 and 6395, stopped after
    this module's tests (its keys go with it: no data is kept)."""
    tmp_path = tmp_path_factory.mktemp("cluster")
    if shutil.which("redis-server") is None:
        pytest.skip("no redis-server binary on PATH")
    # Each node also listens on its cluster bus port, 10000 above its own.
    busy = [p for port in PORTS for p in (port, port + 10000) if not _port_free(p)]
    if busy:
        pytest.skip(f"port(s) {busy} are in use; the cluster test needs them")
    nodes: list[OwnRedis] = []
    try:
        for port in PORTS:
            nodes.append(_start_node(port, tmp_path))
        _join(nodes[0].port, nodes[1].port)
        yield Cluster(sem_node=nodes[0], budget_node=nodes[1])
    finally:
        for node in nodes:
            node.kill()


def _port_free(port: int) -> bool:
    """No server listens on ``port`` (connections closing on it do not count,
    as redis-server binds with SO_REUSEADDR too)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _start_node(port: int, data_dir: Path) -> OwnRedis:
    node = OwnRedis()
    node.port = port
    node.url = f"redis://127.0.0.1:{port}/0"
    node.start(
        "--dir", str(data_dir),
        "--cluster-enabled", "yes",
        "--cluster-config-file", f"nodes-{port}.conf",
    )  # fmt: skip
    return node


def _join(first: int, second: int) -> None:
    """Split the slots between the nodes, introduce them, wait until both
    see a whole cluster (a hang guard, not a timing assertion)."""
    clients = [redis.Redis(port=port, decode_responses=True) for port in PORTS]
    try:
        clients[0].execute_command("CLUSTER", "ADDSLOTS", *range(0, 8192))
        clients[1].execute_command("CLUSTER", "ADDSLOTS", *range(8192, 16384))
        clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", second)
        deadline = time.monotonic() + 30
        while not all(_whole(client) for client in clients):
            if time.monotonic() > deadline:
                pytest.fail(f"the cluster on {first} and {second} did not form")
            time.sleep(0.05)
    finally:
        for client in clients:
            client.close()


def _whole(client: redis.Redis) -> bool:
    info = client.execute_command("CLUSTER", "INFO")
    text = info if isinstance(info, str) else info.decode()
    return "cluster_state:ok" in text and "cluster_known_nodes:2" in text


def _call(gov: Governor) -> None:
    GovernedLiteLLM(gov).completion(
        model="gpt-4o-mini", messages=MESSAGES, mock_response="Lima", max_tokens=20
    )


def _governor(url: str, mode: str, fanout: bool = False) -> Governor:
    caps = {"fanout": Fanout(scope_caps={"team": 2})} if fanout else {}
    policy = Policy(
        budgets=[Budget(scope="team", max_usd="1")],
        failure_mode=mode,  # type: ignore[arg-type]
        **caps,  # type: ignore[arg-type]
    )
    return Governor(policy, ledger=RedisLedger(RedisConfig(url=url, attempts=1)))


# -- 1. a cluster node that sends the budgets elsewhere ------------------------


def test_closed_mode_refuses_with_cluster_advice(cluster: Cluster) -> None:
    """MOVED from a node that does not serve {budgets} refuses the call, naming
    the node as a cluster node and what to point the URL at."""
    gov = _governor(cluster.sem_node.url, "closed")
    try:
        with pytest.raises(StoreUnavailable) as info, gov.task(team="a"):
            _call(gov)
    finally:
        gov.close(timeout_s=0.5)
    message = str(info.value)
    assert f"127.0.0.1:{cluster.sem_node.port} {CLUSTER_NODE}" in message
    assert "MOVED 14259" in message
    assert "standalone Redis or primary" in message
    assert "cluster proxy that routes by hash tag" in message


def test_open_mode_admits_under_the_shadow_budget(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """Open mode treats the cluster's refusal like an outage: the call goes on
    under the local shadow budget, with the degraded warning."""
    gov = _governor(cluster.sem_node.url, "open")
    try:
        with (
            caplog.at_level(logging.WARNING, logger="governor.stores._failover"),
            gov.task(team="a") as task,
        ):
            _call(gov)
    finally:
        gov.close(timeout_s=0.5)
    assert task.report().cost_usd == MOCK_COST
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "governor.stores._failover"
    ]
    assert any("failing open" in w and CLUSTER_NODE in w for w in warnings)


def test_a_fanout_cap_on_another_node_refuses_with_cluster_advice(
    cluster: Cluster,
) -> None:
    """The budgets' node serves {budgets} but not the cap's {sem:team:a}."""
    gov = _governor(cluster.budget_node.url, "closed", fanout=True)
    try:
        with pytest.raises(StoreUnavailable) as info, gov.task(team="a"):
            _call(gov)
    finally:
        gov.close(timeout_s=0.5)
    assert f"127.0.0.1:{cluster.budget_node.port} {CLUSTER_NODE}" in str(info.value)
    assert "MOVED 8165" in str(info.value)


def test_the_async_steps_raise_store_unavailable_too(cluster: Cluster) -> None:
    """areserve goes through the same refusal handling as reserve."""
    ledger = RedisLedger(RedisConfig(url=cluster.sem_node.url, attempts=1))

    async def areserve() -> None:
        try:
            await ledger.areserve("h1", [LINE], 10, 0, 60)
        finally:
            await ledger.aclose()

    with pytest.raises(StoreUnavailable, match=CLUSTER_NODE):
        asyncio.run(areserve())
    with pytest.raises(StoreUnavailable, match=CLUSTER_NODE):
        ledger.reserve("h2", [LINE], 10, 0, 60)
    ledger.close()


def test_budget_status_says_the_url_names_a_cluster_node(
    cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """The command line gives the cluster advice, not redis-py's bare reply."""
    url = cluster.sem_node.url
    assert main(["budget", "status", "--json", "--redis-url", url]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "store_unavailable"
    assert CLUSTER_NODE in error["message"]
    assert "MOVED 14259" in error["message"]
    assert "--redis-url" in error["message"]
    assert "failure_mode" not in error["message"]


# -- 2. every cluster reply gets the advice (no server needed) -----------------


@pytest.mark.parametrize(
    "reply",
    [
        "MOVED 14259 127.0.0.1:6395",
        "ASK 14259 127.0.0.1:6395",
        "CROSSSLOT Keys in request don't hash to the same slot",
        "CLUSTERDOWN Hash slot not served",
        "TRYAGAIN Multiple keys request during rehashing of slot",
        "ERR Script attempted to access a non local key in a cluster node",
    ],
)
def test_cluster_replies_are_refusals_with_advice(reply: str) -> None:
    advice = refusal_advice(BaseParser.parse_error(reply)) or ""
    assert advice.startswith(f"This Redis {CLUSTER_NODE}")


def test_a_retried_clusterdown_names_the_node_and_the_attempts() -> None:
    """CLUSTERDOWN is retried (a failover ends it); then it names the node."""
    connections = RedisConnections(RedisConfig(url="redis://:pw@10.0.0.7:7001/0"))
    reply = BaseParser.parse_error("CLUSTERDOWN The cluster is down")
    message = str(connections.unavailable("reserve", reply))
    assert "refused reserve in all 3 attempts: CLUSTERDOWN" in message
    assert f"10.0.0.7:7001 {CLUSTER_NODE}" in message
    assert "pw" not in message


# -- 3. a client object where a URL belongs ------------------------------------


@pytest.mark.parametrize("make", [redis.Redis, aredis.Redis])
def test_a_client_object_is_refused_when_the_ledger_is_made(make: type) -> None:
    """RedisLedger(redis.Redis(...)) used to fail at the first reserve with
    AttributeError; it is refused at once, with the forms it takes."""
    client = make(port=6394)
    with pytest.raises(ConfigError) as info:
        RedisLedger(client)
    message = str(info.value)
    assert "takes a Redis URL string or a RedisConfig" in message
    assert "redis-py client" in message
    assert "RedisLedger('redis://:PASSWORD@127.0.0.1:6379/0')" in message


def test_other_objects_are_refused_too() -> None:
    with pytest.raises(ConfigError, match=r"got builtins\.int"):
        RedisLedger(6379)  # type: ignore[arg-type]
