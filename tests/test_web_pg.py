"""
The web API's SQL on PostgreSQL: the same tests as L{tests.test_web}, on an
archive in a throwaway PostgreSQL server (L{tests.pgserver}; skipped when
PostgreSQL is not installed, a failure with C{FEDMSG_TEST_REQUIRE_PG=1}).
"""

from __future__ import annotations

from fedmsg_twisted.store import Archive
from tests import pgserver
from tests import test_web as _web

pgserver.ensure_template()  # blocking initdb, once, before the reactor runs


class _OnPostgres(_web.WebTestCase):
    async def make_archive(self, **kw) -> Archive:
        server = await pgserver.start_server(self)
        return Archive(server.url, **kw)


class PGRawTests(_OnPostgres):
    test_everything_newest_first = _web.RawTests.test_everything_newest_first
    test_filters = _web.RawTests.test_filters
    test_user_and_package_are_what_the_text_layer_names = (
        _web.RawTests.test_user_and_package_are_what_the_text_layer_names
    )
    test_pages = _web.RawTests.test_pages
    test_id = _web.RawTests.test_id
    test_statement_timeout = _web.RawTests.test_statement_timeout
    endless_sql = "SELECT pg_sleep(30)"


class PGStatsTests(_OnPostgres):
    test_counts_by = _web.StatsTests.test_counts_by
    test_counts_by_user_and_package = _web.StatsTests.test_counts_by_user_and_package
    test_windows = _web.StatsTests.test_windows
    assertStatsMatchFilter = _web.StatsTests.assertStatsMatchFilter


class PGEventTests(_OnPostgres):
    test_reconnect_replays_what_was_missed = _web.EventTests.test_reconnect_replays_what_was_missed
    test_replay_is_bounded = _web.EventTests.test_replay_is_bounded
    test_no_loss_across_a_busy_reconnect = _web.EventTests.test_no_loss_across_a_busy_reconnect
