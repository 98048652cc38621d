from support.mirrors import mirrors  # noqa: F401 - the fixture
