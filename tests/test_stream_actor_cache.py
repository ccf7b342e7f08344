"""The pool of stream actors, without Ray: what is reused, what is retired, what is killed."""

from __future__ import annotations

import itertools

from pipeline.cluster.stream_actor_cache import StreamActorCache


def make_pool(streams_per_pair: int = 3):
    names = itertools.count()
    killed: list[str] = []
    pool = StreamActorCache(lambda node: (f"decoder{next(names)}", f"sink{next(names)}"), streams_per_pair,
                           killed.append)
    return pool, killed


def test_a_pair_serves_stream_after_stream_until_it_is_retired():
    pool, killed = make_pool(streams_per_pair=3)
    first = pool.take()
    for _ in range(2):
        pool.give_back(first)
        assert pool.take() is first and pool.started == 1
    pool.give_back(first)  # its third stream: retired, not kept
    assert killed == list(first) and pool.idle == 0
    assert pool.take() is not first and pool.started == 2


def test_streams_at_once_get_pairs_of_their_own_and_failures_are_not_reused():
    pool, killed = make_pool()
    one, two = pool.take(), pool.take()
    assert one != two and pool.started == 2
    pool.discard(two)  # its stream failed
    pool.give_back(one)
    assert killed == list(two) and pool.idle == 1
    assert pool.take() is one


def test_clear_kills_every_idle_pair():
    pool, killed = make_pool()
    pairs = [pool.take() for _ in range(3)]
    for pair in pairs[:2]:
        pool.give_back(pair)
    pool.clear()
    assert sorted(killed) == sorted(actor for pair in pairs[:2] for actor in pair) and pool.idle == 0
    assert pool.take() not in pairs and pool.started == 4


def test_pairs_wait_on_the_node_they_ran_on():
    pool, _ = make_pool()
    anywhere = pool.take()  # placed by Ray (no node known yet)
    pool.give_back(anywhere, node="node-a")
    assert pool.take("node-b") is not anywhere
    assert pool.take("node-a") is anywhere
