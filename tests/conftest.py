"""Root fixtures. Each harness module starts one kind of real server, once per session."""

pytest_plugins = [
    "tests.harness.kafka",
    "tests.harness.mongo",
    "tests.harness.s3",
    "tests.harness.prometheus",
    "tests.harness.git_http",
    "tests.harness.remote_write",
]

# Property tests check logic, not speed: on a loaded 2-core CI machine one example can take longer
# than Hypothesis's 200 ms default deadline, which turns a correct test into a flaky one.
from hypothesis import settings as _hypothesis_settings  # noqa: E402

_hypothesis_settings.register_profile("kubefinops", deadline=None)
_hypothesis_settings.load_profile("kubefinops")
