"""The copy of the seed's database guide kept in tests/seed/ is the contract, verbatim."""

import pytest

from tests.seed_schema import VENDORED_GUIDE, shared_guide_path


def test_the_kept_copy_of_the_seed_guide_is_the_shared_one_verbatim():
    shared = shared_guide_path()
    if shared is None:
        pytest.skip("no shared/seed/database-guide.md above this checkout to compare with")
    assert VENDORED_GUIDE.read_bytes() == shared.read_bytes(), (
        "tests/seed/database-guide.md differs from the shared contract: copy it again"
    )
