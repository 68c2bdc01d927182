"""plumbing.jobs.defer: a job already waiting under the same queueing lock is enough,
whatever the lock's text."""

import pytest

from billing.tasks import report_user_usage
from plumbing.jobs import defer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize("name", ["plain:1", "line\nbreak", "carriage\rreturn\x85", "ü\u2028"])
def test_a_second_job_under_the_same_queueing_lock_is_not_queued(name):
    first = defer(report_user_usage, queueing_lock=f"t:{name}", user_id="auth0|x")
    second = defer(report_user_usage, queueing_lock=f"t:{name}", user_id="auth0|x")

    assert first is not None
    assert second is None


def test_different_locks_stay_different():
    assert defer(report_user_usage, queueing_lock="t:a\nb", user_id="auth0|x") is not None
    assert defer(report_user_usage, queueing_lock="t:a\rb", user_id="auth0|x") is not None
