"""Session state (Redis) and, later, stage leadership (etcd). Knows nothing of gRPC."""
