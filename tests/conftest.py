"""Root fixtures. Each harness module starts one kind of real server, once per session."""

pytest_plugins = [
    "tests.harness.kafka",
    "tests.harness.mongo",
    "tests.harness.s3",
    "tests.harness.prometheus",
    "tests.harness.git_http",
    "tests.harness.remote_write",
]
