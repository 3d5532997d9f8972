"""How many examples a property test runs.

A property asks for its own count in the default profile (the fast suite), and runs the loaded
profile's count (at least :data:`THOROUGH`) under ``--hypothesis-profile thorough``. A plain
``@settings(max_examples=n)`` would override every profile, so the thorough run would still run
``n``.
"""

from hypothesis import settings

THOROUGH = 10_000
PROFILE = "thorough"


def examples(default: int) -> settings:
    """Settings of a property test: ``default`` examples, or the thorough profile's count."""
    if settings.get_current_profile_name() == PROFILE:
        return settings(max_examples=max(default, settings.default.max_examples), deadline=None)
    return settings(max_examples=default, deadline=None)
