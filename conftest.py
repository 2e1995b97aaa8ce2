"""pytest set-up: import paths and the hypothesis profiles.

Default profile "fast": few examples, derandomized, so CI is repeatable and quick.
`HYPOTHESIS_PROFILE=thorough pytest` draws many more, with fresh randomness.
"""
import os
import sys

from hypothesis import HealthCheck, settings

ROOT = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
settings.register_profile("fast", max_examples=25, derandomize=True, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=400, print_blob=True, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "fast"))
