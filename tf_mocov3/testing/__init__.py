"""Helpers for tests and benchmarks that ship with the package, so that both import them the same way
(`from tf_mocov3.testing import fixtures_data`) and benchmarks/ never reaches into tests/.

Nothing in the library imports this subpackage.
"""
