"""The API's result cache (api/cache.py) as plain Python: a body is built once per (job, kind) and epoch count,
a newer count replaces it, and past the byte budget the least recently read bodies go first."""

from api.cache import ResultCache


def builder(body: bytes, calls: list):
    def build():
        calls.append(body)
        return body
    return build


def test_a_body_is_built_once_per_version_and_a_newer_version_replaces_it():
    cache, calls = ResultCache(max_bytes=100), []
    assert cache.get((1, "json"), 3, builder(b"abc", calls)) == b"abc"
    assert cache.get((1, "json"), 3, builder(b"zzz", calls)) == b"abc"  # cached: not built again
    assert cache.get((1, "json"), 4, builder(b"abcd", calls)) == b"abcd"  # one more epoch: built anew
    assert calls == [b"abc", b"abcd"] and cache.size == 4  # the old body's bytes are given back


def test_past_its_budget_the_least_recently_read_bodies_are_evicted():
    cache, calls = ResultCache(max_bytes=10), []
    cache.get((1, "csv"), 1, builder(b"a" * 4, calls))
    cache.get((2, "csv"), 1, builder(b"b" * 4, calls))
    cache.get((1, "csv"), 1, builder(b"x", calls))  # read again: job 1 is now the most recent
    cache.get((3, "csv"), 1, builder(b"c" * 4, calls))  # 12 bytes > 10: job 2's body goes, job 1's stays
    assert cache.size == 8 and calls == [b"aaaa", b"bbbb", b"cccc"]
    assert cache.get((1, "csv"), 1, builder(b"new", calls)) == b"aaaa"
    assert cache.get((2, "csv"), 1, builder(b"bbbb", calls)) == b"bbbb" and calls[-1] == b"bbbb"  # rebuilt


def test_a_body_bigger_than_the_whole_budget_is_served_but_not_kept():
    cache, calls = ResultCache(max_bytes=10), []
    cache.get((1, "csv"), 1, builder(b"a" * 4, calls))
    assert cache.get((2, "parquet"), 1, builder(b"b" * 11, calls)) == b"b" * 11
    assert cache.size == 4 and cache.get((1, "csv"), 1, builder(b"?", calls)) == b"a" * 4
    cache.get((2, "parquet"), 1, builder(b"b" * 11, calls))
    assert calls == [b"aaaa", b"b" * 11, b"b" * 11]
