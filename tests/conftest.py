"""Tests run in float64: they compare against closed forms and dense linear algebra."""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_platforms", "cpu")
