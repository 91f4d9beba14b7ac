"""Test fakes shipped with the package: FakeCell and an in-memory cluster harness."""
