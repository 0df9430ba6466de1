"""What nodekiln learns about a connection is kept beside it, not on the SDK's object."""

from __future__ import annotations

from nodekiln.openstack.cloud import cloud_of, count_calls


class _Session:
    def request(self, url: str, method: str, *args: object, **kwargs: object) -> str:
        return f"{method} {url}"


class _Connection:
    def __init__(self) -> None:
        self.session = _Session()


def test_one_cloud_and_one_counter_per_connection_and_nothing_set_on_it():
    conn = _Connection()
    before = set(vars(conn))
    counter = count_calls(conn)
    assert count_calls(conn) is counter and cloud_of(conn).calls is counter
    assert set(vars(conn)) == before  # the counter wraps the session's request, nothing is added to the connection
    assert conn.session.request("http://x/v2.0/networks", "post") == "post http://x/v2.0/networks"
    conn.session.request("http://x/v3/auth/tokens", "POST", authenticated=False)
    assert counter.writes == 1 and counter.by_method["auth"] == 1
    assert cloud_of(_Connection()) is not cloud_of(conn)  # a new connection learns afresh
    assert cloud_of(conn).tags_in_post is True
