"""Hypothesis strategies shared by the property tests."""

from hypothesis import strategies as st


def json_values(*, max_leaves: int):
    """Any JSON document (no NaN or infinities: JSON has none)."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )
