"""Test set-up: pick the Keras backend before Keras is imported."""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Real S3 (moto) and GCS (fake-gcs-server) servers on 127.0.0.1 for the bucket
# tests: `object_servers` (session), `bucket` / `bucket_url` (a fresh bucket on
# each server in turn). See tests/support/servers.py.
from tests.support.servers import bucket, bucket_url, object_servers  # noqa: E402, F401
