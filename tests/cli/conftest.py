"""The command-line tests keep JAX's compilation cache in a temporary folder, never in
the user's home (``FLOWS_CACHE_DIR``, read by `flows run` and inherited by the
subprocesses the tests start)."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def compilation_cache_in_a_temporary_folder(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOWS_CACHE_DIR", str(tmp_path_factory.mktemp("jax_cache")))
        yield
